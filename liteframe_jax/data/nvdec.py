"""Decoding on the GPU's video engines (NVDEC, through NVIDIA's PyNvVideoCodec), for answering questions:
frames decoded, resized and handed to JAX on the GPU, never through the host.

One decoder session reaches a sampled frame by decoding from its keyframe, which on a long video is slower
than many CPU threads; the wanted frames are therefore cut into contiguous runs, each decoded by its own
session in a thread, so the GPU's several decode engines work at once. `choose` picks between this and PyAV
(`data/video.py`) and says why.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np

DECODERS = ("pyav", "nvdec", "auto")
SESSIONS = 7  # an H100's or H200's NVDEC engines; more sessions than engines only queue


def problem() -> str | None:
    """Why NVDEC cannot be used here (no package, no GPU), or None."""
    import importlib.util

    import jax
    package = (None if importlib.util.find_spec("PyNvVideoCodec") else
               "the PyNvVideoCodec package is not installed (pip install pynvvideocodec)")
    gpu = None if jax.default_backend() == "gpu" else f"JAX runs on {jax.default_backend()}, not a GPU"
    found = [p for p in (package, gpu) if p]
    return "; ".join(found) if found else None


def choose(decoder: str) -> tuple[str, str]:
    """('pyav' | 'nvdec', why) for a `decoder` setting: `auto` takes NVDEC where it can run; an explicit
    `nvdec` that cannot is an error naming what is missing."""
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
    if decoder == "pyav":
        return "pyav", "asked for"
    why = problem()
    if decoder == "nvdec":
        if why:
            raise ValueError(f"decoder='nvdec' cannot run here: {why}. Use decoder='pyav' or 'auto'")
        return "nvdec", "asked for"
    return ("pyav", f"auto: {why}") if why else ("nvdec", "auto: PyNvVideoCodec and a GPU are here")


def _resize(frames, size: int):
    import jax
    import jax.numpy as jnp
    x = jax.image.resize(frames.astype(jnp.float32), (frames.shape[0], size, size, 3), "linear")
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def stream_frames(path: str, indices, size: int, num_frames: int, chunk: int = 1, sessions: int = SESSIONS):
    """The frames at `indices` (non-decreasing, may repeat) as consecutive pieces on the GPU, each a whole
    number of `chunk` frames, decoded by its own session. Frames are stretched to size x size RGB uint8; an
    index past `num_frames` (the probed count) stands for the last frame, as `video.decode_frames` fills it.

    All sessions finish decoding before the first piece is resized and yielded: XLA captures a new executable
    into a CUDA graph, and a capture fails while another thread calls into CUDA (as a decoding session does),
    so JAX and NVDEC never run at once here."""
    import jax.numpy as jnp
    import PyNvVideoCodec as nvc
    wanted = [min(int(i), num_frames - 1) for i in indices]
    n_chunks = -(-len(wanted) // chunk)
    groups = [g for g in np.array_split(np.arange(n_chunks), max(1, min(sessions, n_chunks))) if len(g)]
    pieces = [wanted[g[0] * chunk:(g[-1] + 1) * chunk] for g in groups]

    def decode(piece):
        distinct = sorted(set(piece))
        session = nvc.SimpleDecoder(path, gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)
        frames = session.get_batch_frames_by_index(distinct)
        if len(frames) != len(distinct):
            raise RuntimeError(f"{path}: NVDEC returned {len(frames)} of the frames {distinct[:3]}...")
        return session, distinct, frames  # the frames are the session's surfaces: it must outlive their reading

    with concurrent.futures.ThreadPoolExecutor(len(pieces)) as pool:
        decoded = list(pool.map(decode, pieces))  # holds every session until the last piece is read
    for piece, (_, distinct, frames) in zip(pieces, decoded):
        resized = _resize(jnp.stack([jnp.from_dlpack(f) for f in frames]), size)
        where = {i: k for k, i in enumerate(distinct)}
        yield resized[jnp.asarray([where[i] for i in piece])].block_until_ready()


def decode_frames(path: str, indices, size: int, num_frames: int, sessions: int = SESSIONS):
    """`stream_frames` at once: (len(indices), size, size, 3) uint8 on the GPU."""
    import jax.numpy as jnp
    return jnp.concatenate(list(stream_frames(path, indices, size, num_frames, 1, sessions)))
