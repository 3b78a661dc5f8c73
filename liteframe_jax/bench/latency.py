"""`bench latency`: time to first token of the LiteFrame Video LLM against InternVL3, optionally counting the
decoding of the video file."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
from flax import nnx

from liteframe_jax.bench.common import (
    BF16,
    TUBELET,
    fused_mlp_kernel,
    normalise_frames,
    paper_models,
    peak_memory_gib,
    qwen25_7b_config,
    random_frames,
    timed,
    tubelet_student,
)
from liteframe_jax.bench.pipeline import synthetic_video, time_decode
from liteframe_jax.models.internvit import InternVisionTower, InternVLHeadConfig
from liteframe_jax.models.qwen2 import Qwen2
from liteframe_jax.models.student import LiteFrameStudent
from liteframe_jax.models.video_llm import Projector, ProjectorConfig


def bench_latency(ceiling, small, impl, out_dir, decode: str | None = None, decode_workers: int = 0,
                  decoder: str = "pyav"):
    """Per request on one GPU: vision encoding, LLM prefill and time to first token (their sum), for the
    InternVL3-8B-style model at 16/32/64 frames and the LiteFrame model at 64..512 frames, same LLM.
    `decode` (a video file, or "synthetic" for `synthetic_video`) adds the frame decoding before them, on
    `decode_workers` threads (0: one per CPU core), or with `decoder='nvdec'` on the GPU's video engines
    (`data/nvdec.py`, frames left on the GPU); the decoded frames are then the request's input."""
    from liteframe_jax.data import nvdec
    decoder, decoder_reason = nvdec.choose(decoder)
    vit, head, student_cfg, _, _ = paper_models(small)
    llm_cfg = qwen25_7b_config(small)
    text = 64
    plans = ([("InternVL3-8B-style", f) for f in (16, 32, 64)] + [("LiteFrame", f) for f in (64, 128, 256, 512)]
             + [(TUBELET, f) for f in (64, 128, 256, 512)])
    if small:
        head = InternVLHeadConfig(out_features=64)
        plans = [("InternVL3-8B-style", 2), ("LiteFrame", 8), ("LiteFrame", 16), (TUBELET, 16)]
    cast = lambda tree: jax.tree.map(lambda x: x.astype(BF16), tree)
    llm = Qwen2(llm_cfg, rngs=nnx.Rngs(3), dtype=BF16, attn_impl=impl)
    llm_graph, llm_params = nnx.split(llm)
    llm_params = cast(llm_params)
    del llm
    # the fused kernels where this device runs them (BENCHMARKS.md, passes 3-8), for both models: fc1 + GELU
    # in InternViT and the student, the block tail in the student
    mlp_kernel = fused_mlp_kernel()
    tower = InternVisionTower(vit, head, rngs=nnx.Rngs(1), dtype=BF16, attn_impl=impl, mlp_kernel=mlp_kernel)
    tower_graph, tower_params = nnx.split(tower)
    tower_params = cast(tower_params)
    encoders = {}
    student_cfgs = {"LiteFrame": student_cfg, TUBELET: tubelet_student(small)}
    for name, cfg in student_cfgs.items():
        student = LiteFrameStudent(cfg, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl, mlp_kernel=mlp_kernel)
        proj = Projector(cfg.out_dim, llm_cfg.hidden_size, ProjectorConfig(), rngs=nnx.Rngs(2), dtype=BF16)
        graph, params = nnx.split((student, proj))
        encoders[name] = (graph, cast(params))
    size = vit.image_size

    @jax.jit
    def encode_internvl(p, frames):
        grid = nnx.merge(tower_graph, p).features(normalise_frames(frames), "projector")
        return grid.reshape(1, -1, grid.shape[-1])

    def liteframe_encoder(graph):
        @jax.jit
        def encode(p, frames):
            s, pr = nnx.merge(graph, p)
            clips = normalise_frames(frames).reshape(-1, student_cfg.num_frames, size, size, 3)
            return pr(s(clips)).reshape(1, -1, llm_cfg.hidden_size)
        return encode

    encoders = {name: (liteframe_encoder(graph), params) for name, (graph, params) in encoders.items()}

    @jax.jit
    def prefill(p, visual, tokens):
        m = nnx.merge(llm_graph, p)
        embeds = jnp.concatenate([m.embed_tokens(tokens[:, :text // 2]), visual.astype(BF16),
                                  m.embed_tokens(tokens[:, text // 2:])], 1)
        n = embeds.shape[1]
        h, _ = m.hidden(embeds, jnp.arange(n)[None], None)  # one request, no padding: no length mask
        return jnp.argmax(m.logits(h[:, -1]), -1)  # the first token

    if decode == "synthetic":
        import tempfile
        decode = synthetic_video(tempfile.mkdtemp(prefix="latency_video_"), 12 if small else 120, small)
    decode_workers = decode_workers or os.cpu_count() or 1
    rows = []
    for model, frames_n in plans:
        frames = random_frames(1, frames_n, size)[0]
        tokens = jax.random.randint(jax.random.key(5), (1, text), 0, 500)
        decoded = {}
        if decode:  # a bad path or an unreadable file stops the bench here, naming the file
            dec_s, array = time_decode(decode, frames_n, size, decode_workers, decoder=decoder)
            frames = jnp.asarray(array)
            decoded = {"decode_ms": dec_s * 1e3, "decoder": decoder, "decoder_reason": decoder_reason,
                       "decode_workers": decode_workers if decoder == "pyav" else nvdec.SESSIONS,
                       "video": os.path.basename(decode)}
        try:
            if model in encoders:
                encode, params = encoders[model]
                enc_s = timed(encode, params, frames)
                visual = encode(params, frames)
            else:
                enc_s = timed(encode_internvl, tower_params, frames)
                visual = encode_internvl(tower_params, frames)
            pre_s = timed(prefill, llm_params, visual, tokens, iters=5)
        except Exception as e:
            rows.append({"bench": "latency", "model": model, "frames": frames_n,
                         "error": f"{type(e).__name__}: {str(e)[:300]}"})
            continue
        rows.append({"bench": "latency", "model": model, "attention": impl or "xla", "frames": frames_n,
                     "mlp_kernel": mlp_kernel,
                     "student_act": student_cfgs[model].act if model in encoders else None,
                     "visual_tokens": int(visual.shape[1]),
                     "encode_ms": enc_s * 1e3, "prefill_ms": pre_s * 1e3, "ttft_ms": (enc_s + pre_s) * 1e3,
                     **decoded, **({"ttft_with_decode_ms": decoded["decode_ms"] + (enc_s + pre_s) * 1e3}
                                   if decoded else {}),
                     "peak_gib": peak_memory_gib()})
        print(json.dumps(rows[-1]), flush=True)  # progress: the ratio column comes with the final rows
    ok = [r for r in rows if "error" not in r]
    internvl = [r for r in ok if r["model"] == "InternVL3-8B-style"]
    ref = max(internvl, key=lambda r: r["frames"]) if internvl else None
    for r in ok:
        if ref:
            r["ttft_vs_internvl_max_frames"] = r["ttft_ms"] / ref["ttft_ms"]
    if out_dir and ok:
        os.makedirs(out_dir, exist_ok=True)
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4))
        for model, colour in (("InternVL3-8B-style", "tab:red"), ("LiteFrame", "tab:blue"),
                              (TUBELET, "tab:green")):
            pts = [(r["frames"], r["ttft_ms"], r["encode_ms"], r.get("ttft_with_decode_ms")) for r in ok
                   if r["model"] == model]
            if pts and pts[0][3] is not None:
                ax.plot([p[0] for p in pts], [p[3] for p in pts], "s:", color=colour, alpha=0.8,
                        label=f"{model}: decode+encode+prefill")
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=colour, label=f"{model}: encode+prefill")
                ax.plot([p[0] for p in pts], [p[2] for p in pts], "x--", color=colour, alpha=0.6,
                        label=f"{model}: encode")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("frames per request")
        ax.set_ylabel("ms (median)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"time to first token on {jax.devices()[0].device_kind}")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, "latency.png"), dpi=120)
        plt.close(fig)
    return rows
