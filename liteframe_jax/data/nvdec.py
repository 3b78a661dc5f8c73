"""Decoding on the GPU's video engines (NVDEC, through NVIDIA's PyNvVideoCodec), for answering questions:
frames decoded, resized and handed to JAX on the GPU, never through the host.

The wanted frames are cut into pieces, dealt round-robin to several decoder sessions in threads, so the GPU's
decode engines work at once. Streamed, a piece is a whole clip and the first pieces are ready while later
ones still decode: the encoder starts on them (`eval.answer.VideoQA.encode_streaming`). Decoded at once,
pieces are sized so that every session gets about the same frames (`balanced_piece`). Sessions are kept for the
process and pointed at each new video (`reconfigure_decoder`), since starting one costs more than decoding a
short request. `choose` picks between this and PyAV (`data/video.py`) and says why.

XLA runs an executable as a CUDA graph, which it records by capturing a stream; a decoding session's CUDA
calls in another thread break a capture that is under way. Code that runs while sessions decode is therefore
compiled without CUDA graphs (`jit_beside_decoding`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import threading
import time

import numpy as np

DECODERS = ("pyav", "nvdec", "auto")
SESSIONS = 7  # an H100's or H200's NVDEC engines; more sessions than engines only queue
NO_CUDA_GRAPHS = {"xla_gpu_enable_command_buffer": ""}


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


def jit_beside_decoding(fn, **jit_kwargs):
    """`jax.jit(fn)` for code that runs while decoder sessions decode: compiled without CUDA graphs."""
    import jax
    return jax.jit(fn, compiler_options=NO_CUDA_GRAPHS, **jit_kwargs)


@functools.partial(jit_beside_decoding, static_argnums=2)
def _convert(frames, where, size: int):
    """Decoded RGB frames (each H x W x 3 uint8) -> the wanted ones, stretched to size x size uint8."""
    import jax
    import jax.numpy as jnp
    x = jnp.stack(frames)
    x = jax.image.resize(x.astype(jnp.float32), (x.shape[0], size, size, 3), "linear")
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)[where]


class _SessionPool:
    """Decoder sessions kept for the process, one request at a time; `point_at` readies `n` of them for a
    video, reconfiguring kept sessions (a new one where that fails, e.g. a larger picture) in parallel."""

    def __init__(self):
        self.sessions: list = []
        self.lock = threading.Lock()

    def point_at(self, path: str, n: int, color: str = "RGB") -> list:
        import PyNvVideoCodec as nvc
        colour = getattr(nvc.OutputColorType, color)

        def ready(k):
            if k < len(self.sessions) and self.sessions[k][1] == color:
                try:
                    self.sessions[k][0].reconfigure_decoder(path)
                    return self.sessions[k]
                except Exception:  # noqa: BLE001 - a session that cannot take this video is replaced below
                    pass
            return nvc.SimpleDecoder(path, gpu_id=0, use_device_memory=True, output_color_type=colour), color

        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            ready_sessions = list(pool.map(ready, range(n)))
        self.sessions[:n] = ready_sessions
        return [s for s, _ in ready_sessions]


_POOL = _SessionPool()


def stream_frames(path: str, indices, size: int, num_frames: int, chunk: int = 1, sessions: int = SESSIONS):
    """The frames at `indices` (non-decreasing, may repeat) as consecutive pieces of `chunk` frames (the last
    may be shorter) on the GPU, in order, each yielded as soon as it is decoded. Frames are stretched to
    size x size RGB uint8; an index past `num_frames` (the probed count) stands for the last frame, as
    `video.decode_frames` fills it."""
    import jax.numpy as jnp
    wanted = [min(int(i), num_frames - 1) for i in indices]
    pieces = [wanted[s:s + chunk] for s in range(0, len(wanted), chunk)]
    shares = deal(len(pieces), sessions)
    n = len(shares)
    done = [concurrent.futures.Future() for _ in pieces]

    def decode(session, k):
        for j, p in enumerate(shares[k]):
            try:
                distinct = sorted(set(pieces[p]))
                frames = session.get_batch_frames_by_index(distinct)
                if len(frames) != len(distinct):
                    raise RuntimeError(f"{path}: NVDEC returned {len(frames)} of the frames {distinct[:3]}...")
                where = {i: j for j, i in enumerate(distinct)}
                # the frames are the session's surfaces, reused by its next call: converted and copied first
                out = _convert([jnp.from_dlpack(f) for f in frames], jnp.asarray([where[i] for i in pieces[p]]),
                               size).block_until_ready()
                done[p].set_result(out)
            except BaseException as e:  # noqa: BLE001 - handed to the reader, which raises it in order
                for rest in shares[k][j:]:
                    done[rest].set_exception(e)
                return

    with _POOL.lock:
        ready = _POOL.point_at(path, n)
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            for k in range(n):
                pool.submit(decode, ready[k], k)
            for future in done:
                yield future.result()


def deal(num_pieces: int, sessions: int) -> list[list[int]]:
    """Pieces (in order) per session, round-robin: session k gets pieces k, k + n, ... of n = min(sessions,
    num_pieces) sessions, so the first pieces are decoded first, side by side."""
    n = max(1, min(sessions, num_pieces))
    return [list(range(k, num_pieces, n)) for k in range(n)]


def balanced_piece(num_frames: int, sessions: int, most: int = 8) -> int:
    """Frames per piece, at most `most`, for `num_frames` decoded at once: as many pieces as fill whole rounds
    of the sessions, so each session gets about the same frames (64 frames on 7 sessions: pieces of 5, at
    most 10 frames a session; pieces of 8 would give one session 16)."""
    rounds = max(1, -(-num_frames // (most * sessions)))
    return max(1, -(-num_frames // (rounds * sessions)))


def decode_frames(path: str, indices, size: int, num_frames: int, sessions: int = SESSIONS):
    """`stream_frames` at once: (len(indices), size, size, 3) uint8 on the GPU."""
    import jax.numpy as jnp
    chunk = balanced_piece(len(indices), sessions)
    return jnp.concatenate(list(stream_frames(path, indices, size, num_frames, chunk, sessions)))


def raw_throughput(path: str, num_frames: int, sessions: int = SESSIONS, batch: int = 64) -> dict:
    """The decode engines' own speed on this file: frames/s of `sessions` sessions each decoding its
    contiguous share of all the frames in order, with the decoder's native output (no colour conversion, no
    copy), and of one session alone; sessions are started before the clock."""
    def run(n):
        ready = _POOL.point_at(path, n, color="NATIVE")
        bounds = np.linspace(0, num_frames, n + 1).astype(int)

        def share(k):
            for s in range(bounds[k], bounds[k + 1], batch):
                ready[k].get_batch_frames_by_index(list(range(s, min(s + batch, bounds[k + 1]))))

        t = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(n) as pool:
            list(pool.map(share, range(n)))
        return num_frames / (time.perf_counter() - t)

    with _POOL.lock:
        return {"raw_frames_per_s": run(sessions), "raw_frames_per_s_one_session": run(1), "raw_sessions": sessions}
