"""`python -m liteframe_jax.bench [matmul|encoders|ctd|lma|pipeline|latency|probe|profile|scaling|all] [--small]
[--out results.json]`

Real sizes, random weights, bfloat16 compute with float32 parameters. Every figure is the median of repeated
timed runs after warm-up (`jax.block_until_ready` around each), beside the bfloat16 matmul ceiling measured
in the same process, so MFU = model FLOP/s / measured ceiling. `--small` shrinks everything to run on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from liteframe_jax.bench import flops as flops_lib
from liteframe_jax.bench.scaling import bench_scaling
from liteframe_jax.jobs import load_config_file
from liteframe_jax.models import block_tail, compression, kernels
from liteframe_jax.models.internvit import InternVisionTower, InternVitConfig, InternVLHeadConfig
from liteframe_jax.models.layers import pure_dict
from liteframe_jax.models.qwen2 import Qwen2, Qwen2Config
from liteframe_jax.models.student import LiteFrameStudent, StudentConfig
from liteframe_jax.models.video_llm import Projector, ProjectorConfig, VideoLLM, splice
from liteframe_jax.train import losses

BF16 = jnp.bfloat16
TUBELET = "LiteFrame (paper_tubelet2)"


def timed(fn, *args, warmup: int = 2, iters: int = 10, carry: bool = False) -> float:
    """Median seconds per call. With `carry`, the call's first output replaces the first argument
    (a donated train state)."""
    args = list(args)
    for _ in range(warmup):
        out = fn(*args)
        jax.block_until_ready(out)
        if carry:
            args[0] = out[0]
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        out = fn(*args)
        jax.block_until_ready(out)
        times.append(time.perf_counter() - t)
        if carry:
            args[0] = out[0]
    return statistics.median(times)


def peak_memory_gib() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2 ** 30


def matmul_ceiling(small: bool, warmup_s: float = 2.0) -> float:
    """bfloat16 FLOP/s of a large `jnp.dot`, timed after `warmup_s` of the same work: a GPU that starts idle
    needs about a second under load to reach its sustained clock, and timing it cold understates the ceiling
    (and so overstates every MFU)."""
    n = 1024 if small else 8192
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (n, n), BF16)
    b = jax.random.normal(k2, (n, n), BF16)
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=BF16))
    jax.block_until_ready(f(a, b))
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < (0.1 if small else warmup_s):
        jax.block_until_ready(f(a, b))
    return 2 * n ** 3 / timed(f, a, b, iters=30)


def random_frames(batch, t, size, seed=0):
    return jax.random.randint(jax.random.key(seed), (batch, t, size, size, 3), 0, 256, jnp.int32).astype(jnp.uint8)


def _normalise(frames):
    return ((frames.astype(jnp.float32) / 255.0 - 0.45) / 0.225).astype(BF16)


def paper_models(small: bool):
    ctd = load_config_file("ctd", "paper")
    vit = InternVitConfig(**ctd.teacher.vit.to_dict())
    head = InternVLHeadConfig(**ctd.teacher.head.to_dict())
    student = StudentConfig.from_dict({**ctd.student.to_dict(), "num_frames": ctd.data.num_frames})
    siglip = InternVitConfig(hidden_size=1152, num_layers=27, num_heads=16, intermediate_size=4304, image_size=378,
                             patch_size=14, layer_scale_init_value=1.0, hidden_act="gelu_pytorch_tanh")
    window = tuple(ctd.compression.window)
    if small:
        vit = InternVitConfig(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, image_size=56,
                              patch_size=14)
        siglip = vit
        head = InternVLHeadConfig(out_features=64)
        student = StudentConfig(image_size=56, num_frames=8, patch_size=(1, 14, 14), width=64, num_heads=4,
                                mlp_dim=128, stages=((1, (2, 2, 2)), (1, (2, 1, 1))), out_dim=64)
        window = (4, 1, 1)
    return vit, head, student, siglip, window


def tubelet_student(small: bool) -> StudentConfig:
    """The `paper_tubelet2` student (2-frame tubelets), or its tiny stand-in."""
    if small:
        return StudentConfig(image_size=56, num_frames=8, patch_size=(2, 14, 14), width=64, num_heads=4,
                             mlp_dim=128, stages=((1, (1, 2, 2)), (1, (2, 1, 1))), out_dim=64)
    ctd = load_config_file("ctd", "paper_tubelet2")
    return StudentConfig.from_dict({**ctd.student.to_dict(), "num_frames": ctd.data.num_frames})


def bench_encoders(ceiling, small, attn_impls):
    """Yields one row per (model, attention, batch) as it is measured."""
    vit, head, student, siglip, _ = paper_models(small)
    tubelet = tubelet_student(small)
    batches = [2] if small else [64, 256]
    for impl in attn_impls:
        for name, build, per_item, frames_per_item, size in (
            ("InternViT-300M 448px (teacher)", lambda: InternVisionTower(vit, None, rngs=nnx.Rngs(0), dtype=BF16,
                                                                          attn_impl=impl),
             flops_lib.internvit_per_frame(vit), 1, vit.image_size),
            ("SigLIP-So400m-shaped 384px (27x27 patches)", lambda: InternVisionTower(siglip, None, rngs=nnx.Rngs(0), dtype=BF16,
                                                                      attn_impl=impl),
             flops_lib.internvit_per_frame(siglip), 1, siglip.image_size),
            ("LiteFrame student (paper), 8-frame clips", lambda: LiteFrameStudent(student, rngs=nnx.Rngs(0),
                                                                                  dtype=BF16, attn_impl=impl),
             flops_lib.student_per_clip(student), student.num_frames, student.image_size),
            ("LiteFrame student (paper_tubelet2), 8-frame clips",
             lambda: LiteFrameStudent(tubelet, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl),
             flops_lib.student_per_clip(tubelet), tubelet.num_frames, tubelet.image_size),
        ) + ((("InternViT-300M 448px (teacher), fused fc1+GELU (pallas)",
               lambda: InternVisionTower(vit, None, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl, mlp_kernel="pallas"),
               flops_lib.internvit_per_frame(vit), 1, vit.image_size),) if kernels.device_problem(BF16) is None
             else ()) + tuple(
            (f"{name}, fused kernels (pallas: fc1+GELU, block tail)",
             lambda cfg=cfg: LiteFrameStudent(cfg, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl,
                                              mlp_kernel="pallas"),
             flops_lib.student_per_clip(cfg), cfg.num_frames, cfg.image_size)
            for name, cfg in (("LiteFrame student (paper)", student), ("LiteFrame student (paper_tubelet2)", tubelet))
            if kernels.device_problem(BF16) is None):  # Hopper: rows with the fused kernels too
            model = build()
            graphdef, params = nnx.split(model)
            is_student = isinstance(model, LiteFrameStudent)
            # students are small enough that 256 frames leaves launch gaps: 512 fills the GPU
            for batch in batches + ([512] if is_student and not small else []):
                items = batch if not is_student else max(1, batch // frames_per_item)
                if is_student:
                    x = _normalise(random_frames(items, frames_per_item, size))
                else:
                    x = _normalise(random_frames(1, items, size)[0])
                f = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x))
                try:
                    sec = timed(f, params, x)
                except Exception as e:  # e.g. cuDNN refusing a head size: reported, not hidden
                    yield {"bench": "encoder", "model": name, "attention": impl or "xla", "batch_frames":
                           items * frames_per_item, "error": f"{type(e).__name__}: {str(e)[:200]}"}
                    continue
                fl = per_item * items
                yield {"bench": "encoder", "model": name, "attention": impl or "xla",
                       "batch_frames": items * frames_per_item, "ms": sec * 1e3,
                       "frames_per_s": items * frames_per_item / sec, "tflops": fl / sec / 1e12,
                       "mfu": fl / sec / ceiling}
            del model, params


def _compile_and_time(step, state, *args, iters=10):
    """AOT-compile a donated train step, time it, and read its memory from the compiled executable.

    Returns (seconds per step, compile seconds, step GiB): arguments + outputs + XLA's temporaries, less
    donated buffers, i.e. what one step needs on the device. Raises on out-of-memory (compile or run).
    """
    t0 = time.perf_counter()
    compiled = step.lower(state, *args).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    step_gib = None
    if mem is not None:
        step_gib = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
                    - mem.alias_size_in_bytes) / 2 ** 30
    sec = timed(compiled, state, *args, iters=iters, carry=True)
    return sec, compile_s, step_gib


def _is_oom(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _adamw_step(loss_fn):
    tx = optax.adamw(1e-4)

    def step(state, *args):
        params, opt = state
        loss, grads = jax.value_and_grad(loss_fn)(params, *args)
        updates, opt = tx.update(grads, opt, params)
        return (optax.apply_updates(params, updates), opt), loss

    return tx, jax.jit(step, donate_argnums=0)


def default_tail_kernel(small: bool) -> str:
    """The student's block-tail kernel the `paper` CTD preset trains with where this process can run it."""
    return "xla" if small or block_tail.device_problem() else "pallas"


def fused_mlp_kernel() -> str:
    """The models' MLP kernel in the inference benches: the fused fc1 + GELU where this process runs it (tiny
    `--small` layers have too few rows for it and keep XLA's path either way)."""
    return "xla" if kernels.device_problem(BF16) else "pallas"


def ctd_setup(small, impl, tail_kernel="xla", mesh=None, teacher_mlp_kernel="xla") -> dict:
    """The CTD bench's models, parameters, loss functions and per-sample FLOPs (shared with `bench scaling`;
    `mesh`: the one its steps run on, for the models' kernels)."""
    vit, head, student_cfg, _, window = paper_models(small)
    teacher = InternVisionTower(vit, head, rngs=nnx.Rngs(1), dtype=BF16, attn_impl=impl,
                                mlp_kernel=teacher_mlp_kernel, mesh=mesh)
    t_graph, t_params = nnx.split(teacher)
    student = LiteFrameStudent(student_cfg, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl, tail_kernel=tail_kernel,
                               mesh=mesh)
    s_graph, s_params = nnx.split(student)
    s_params = pure_dict(s_params)
    t = student_cfg.num_frames
    size = vit.image_size

    def targets(tp, frames):
        b = frames.shape[0]
        grid = nnx.merge(t_graph, tp).features(_normalise(frames).reshape(b * t, size, size, 3), "projector")
        grid = grid.astype(jnp.float32).reshape(b, t, *grid.shape[1:])
        pooled = compression.compress(grid, window)
        return pooled.reshape(b, -1, pooled.shape[-1])

    def loss_online(sp, tp, frames):
        target = jax.lax.stop_gradient(targets(tp, frames))
        pred = nnx.merge(s_graph, sp)(_normalise(frames))
        return losses.ctd_loss(pred, target, mse_weight=1.0, cosine_weight=1.0, clip_sigma=3.0)[0]

    def loss_cached(sp, target, frames):
        pred = nnx.merge(s_graph, sp)(_normalise(frames))
        return losses.ctd_loss(pred, target.astype(jnp.float32), mse_weight=1.0, cosine_weight=1.0,
                               clip_sigma=3.0)[0]

    teacher_fl = flops_lib.internvit_per_frame(vit, head.out_features) * t
    student_fl = 3 * flops_lib.student_per_clip(student_cfg)
    return dict(s_params=s_params, t_params=t_params, targets=targets, frames_per_clip=t, size=size,
                modes={"online teacher": (loss_online, teacher_fl + student_fl),
                       "cached targets": (loss_cached, student_fl)})


def bench_ctd(ceiling, small, impl, tail_kernel, teacher_mlp_kernel="xla"):
    setup = ctd_setup(small, impl, tail_kernel, teacher_mlp_kernel=teacher_mlp_kernel)
    s_params, t_params, targets = setup["s_params"], setup["t_params"], setup["targets"]
    t, size = setup["frames_per_clip"], setup["size"]
    rows = []
    for mode, batches in (("online teacher", [16, 32, 64]), ("cached targets", [32, 64, 128, 256])):
        loss_fn, per_sample = setup["modes"][mode]
        for batch in ([2] if small else batches):
            tx, step = _adamw_step(loss_fn)
            frames = random_frames(batch, t, size)
            try:
                extra = t_params if mode == "online teacher" else jax.jit(targets)(t_params, frames).astype(BF16)
                sec, compile_s, step_gib = _compile_and_time(
                    step, (jax.tree.map(jnp.copy, s_params), tx.init(s_params)), extra, frames)
            except Exception as e:
                rows.append({"bench": "ctd_step", "mode": mode, "batch": batch,
                             "error": f"{type(e).__name__}: {str(e)[:300]}"})
                if _is_oom(e):
                    break  # the largest batch that fits is the previous row
                continue
            rows.append({"bench": "ctd_step", "mode": mode, "attention": impl or "xla",
                         "student_tail_kernel": tail_kernel, "batch": batch,
                         "teacher_mlp_kernel": teacher_mlp_kernel if mode == "online teacher" else None,
                         "ms": sec * 1e3, "samples_per_s": batch / sec, "frames_per_s": batch * t / sec,
                         "tflops": per_sample * batch / sec / 1e12, "mfu": per_sample * batch / sec / ceiling,
                         "compile_s": compile_s, "step_gib": step_gib})
            del extra
    return rows


def bench_lma(ceiling, small, impl):
    _, _, student_cfg, _, _ = paper_models(small)
    llm_cfg = Qwen2Config(vocab_size=151_936, hidden_size=1536, intermediate_size=8960, num_layers=28, num_heads=12,
                          num_kv_heads=2, tie_word_embeddings=True)
    frames_total, text_tokens, answer_tokens = 512, 128, 64
    if small:
        llm_cfg = Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                              num_kv_heads=2, tie_word_embeddings=True)
        frames_total, text_tokens, answer_tokens = 16, 32, 8
    clips = frames_total // student_cfg.num_frames
    per_clip = int(np.prod(student_cfg.output_grid))
    seq = clips * per_clip + text_tokens
    video_id = llm_cfg.vocab_size - 1
    student = LiteFrameStudent(student_cfg, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl)
    proj = Projector(student_cfg.out_dim, llm_cfg.hidden_size, ProjectorConfig(), rngs=nnx.Rngs(2), dtype=BF16)
    llm = Qwen2(llm_cfg, rngs=nnx.Rngs(3), dtype=BF16, attn_impl=impl)
    model = VideoLLM(student, llm, video_token_id=video_id, projector=proj)
    graphdef, params = nnx.split(model)
    params = pure_dict(params)
    frozen, trained = {"encoder": params["encoder"]}, {k: v for k, v in params.items() if k != "encoder"}
    size = student_cfg.image_size

    def loss_fn(tp, fp, tokens, frames, answer_pos):
        m = nnx.merge(graphdef, {**tp, **fp})
        b = tokens.shape[0]
        vis = m.visual_tokens(_normalise(frames).reshape(b * clips, student_cfg.num_frames, size, size, 3))
        embeds = splice(m.llm.embed_tokens(tokens), tokens, vis.reshape(b, -1, vis.shape[-1]), video_id)
        h, _ = m.llm.hidden(embeds, jnp.broadcast_to(jnp.arange(seq), (b, seq)), jnp.ones((b, seq), bool))
        h = jnp.take_along_axis(h, answer_pos[..., None], axis=1)  # logits only where the loss is
        targets = jnp.take_along_axis(tokens, answer_pos + 1, axis=1)
        logp = jax.nn.log_softmax(m.llm.logits(h), -1)
        return -jnp.take_along_axis(logp, targets[..., None], -1).mean()

    rows = []
    plans = [(1, "none")] if small else [(1, "none"), (2, "full"), (4, "full")]
    for batch, remat in plans:
        model.llm.remat = remat
        graphdef, _ = nnx.split(model)
        tx, step = _adamw_step(loss_fn)
        tokens = jnp.concatenate([jnp.full((batch, clips * per_clip), video_id, jnp.int32),
                                  jax.random.randint(jax.random.key(1), (batch, text_tokens), 0, 1000)], 1)
        answer_pos = jnp.broadcast_to(jnp.arange(seq - answer_tokens - 1, seq - 1), (batch, answer_tokens))
        frames = random_frames(batch, frames_total, size)
        llm_fl = 3 * flops_lib.qwen2_per_sequence(llm_cfg, seq, answer_tokens)
        proj_fl = 3 * 2 * clips * per_clip * (student_cfg.out_dim + llm_cfg.hidden_size) * llm_cfg.hidden_size
        student_fl = clips * flops_lib.student_per_clip(student_cfg)  # frozen: forward only
        per_sample = llm_fl + proj_fl + student_fl
        try:
            sec, compile_s, step_gib = _compile_and_time(
                step, (jax.tree.map(jnp.copy, trained), tx.init(trained)), frozen, tokens, frames,
                answer_pos, iters=5)
        except Exception as e:
            rows.append({"bench": "lma_step", "batch": batch, "remat": remat,
                         "error": f"{type(e).__name__}: {str(e)[:300]}"})
            continue
        rows.append({"bench": "lma_step", "model": f"Qwen2-{llm_cfg.hidden_size}x{llm_cfg.num_layers} + student, "
                     f"{frames_total} frames, remat={remat}", "attention": impl or "xla", "batch": batch, "seq": seq,
                     "ms": sec * 1e3, "tokens_per_s": batch * seq / sec, "tflops": per_sample * batch / sec / 1e12,
                     "mfu": per_sample * batch / sec / ceiling, "compile_s": compile_s, "step_gib": step_gib,
                     "trained": "projector + full LLM; student frozen"})
    return rows


def bench_pipeline(small, workers_list):
    """720p H.264 decode + resize to 448 (per core), and the Grain pipeline with worker processes."""
    import tempfile

    import av

    from liteframe_jax.data import clips as clips_lib, demo, pipeline
    folder = tempfile.mkdtemp()
    w, h, n = (320, 180, 48) if small else (1280, 720, 120)
    rng = np.random.default_rng(0)
    frames = demo.render(demo.random_shapes(rng, 3), n, w, h, speed=0.01)
    noise = rng.integers(0, 40, frames.shape, np.uint8)  # texture, so the codec has real work
    path = demo.write_video(os.path.join(folder, "clip.mp4"), frames + noise, fps=30)
    size = 112 if small else 448
    t0 = time.perf_counter()
    count = 0
    with av.open(path) as c:
        s = c.streams.video[0]
        s.thread_count = 1
        for f in c.decode(s):
            f.reformat(width=size, height=size, format="rgb24").to_ndarray()
            count += 1
    sec = time.perf_counter() - t0
    yield {"bench": "decode", "source": f"{w}x{h} H.264", "to": size, "threads": 1, "frames_per_s": count / sec}
    copies = [os.path.join(folder, f"c{i}.mp4") for i in range(16)]
    for c in copies:
        os.link(path, c)
    index = clips_lib.build_index(copies, num_frames=8, stride=4)
    def delivered(workers, batches, cache=None):
        """(clips/s, frames/s) of 8-clip batches after the first, which waits for the workers to start."""
        ds = iter(pipeline.train_dataset(index.clips, size=size, batch_size=8, seed=0, num_workers=workers,
                                         read_threads=2, cache=cache))
        next(ds)
        t0 = time.perf_counter()
        for _ in range(batches):
            next(ds)
        sec = time.perf_counter() - t0
        if hasattr(ds, "close"):
            ds.close()
        return {"workers": workers, "clips_per_s": batches * 8 / sec, "frames_per_s": batches * 64 / sec}

    for workers in workers_list:
        yield {"bench": "pipeline", **delivered(workers, 6 if small else 10)}
    # The decoded-clip cache: built once (each video decoded front to back), then read instead of decoding.
    from liteframe_jax.data import clip_cache
    cache_workers = max(workers_list) or 1
    t0 = time.perf_counter()
    cache = clip_cache.build(index.clips, os.path.join(folder, "cache"), size, workers=cache_workers,
                             log=lambda msg: None)
    sec = time.perf_counter() - t0
    yield {"bench": "clip_cache_build", "workers": cache_workers, "source": f"{w}x{h} H.264",
           "clips_per_s": len(index.clips) / sec, "frames_per_s": len(index.clips) * 8 / sec,
           "decoded_frames_per_s": len(copies) * n / sec}
    for workers in sorted({0, min(4, cache_workers)}):
        yield {"bench": "pipeline_cached", **delivered(workers, 6 if small else 40, cache)}
    import shutil
    shutil.rmtree(folder, ignore_errors=True)  # the videos and the cache: gigabytes at 720p


def qwen25_7b_config(small: bool) -> Qwen2Config:
    """The LLM of InternVL3-8B and of the LiteFrame model in the latency benches, or its tiny stand-in."""
    if small:
        return Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                           num_kv_heads=2)
    return Qwen2Config(vocab_size=152_064, hidden_size=3584, intermediate_size=18_944, num_layers=28,
                       num_heads=28, num_kv_heads=4)


def synthetic_video(folder: str, seconds: int, small: bool) -> str:
    """A 1280x720, 30 fps H.264 video with a keyframe every 2 s (web video's usual spacing), textured so the
    codec has real work; rendered a second at a time."""
    from liteframe_jax.data import demo
    w, h, fps = (320, 180, 30) if small else (1280, 720, 30)
    rng = np.random.default_rng(0)
    # one second of moving shapes over a fixed grain texture, shifted sideways every second: rendering every
    # second anew would take longer than the benchmark itself
    shapes = demo.random_shapes(rng, 4)
    second = demo.render(shapes, fps, w, h, speed=0.01) + rng.integers(0, 24, (h, w, 3), np.uint8)

    def frames():
        for s in range(seconds):
            yield from np.roll(second, 37 * s, axis=2)

    return demo.write_video(os.path.join(folder, f"request_{w}x{h}_{seconds}s.mp4"), frames(), fps=fps,
                            keyframe_every=2 * fps)


def time_decode(path: str, frames_n: int, size: int, workers: int, runs: int = 3):
    """(median seconds, frames): `frames_n` frames uniform over the whole video, decoded and resized by
    `workers` threads, each over its own stretch of the file (`video.decode_frames_split`)."""
    from liteframe_jax.data import video
    from liteframe_jax.data.conversations import uniform_indices
    idx = uniform_indices(video.probe(path).num_frames, frames_n)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        frames = video.decode_frames_split(path, idx, size, workers)
        times.append(time.perf_counter() - t)
    return statistics.median(times), frames


def bench_latency(ceiling, small, impl, out_dir, decode: str | None = None, decode_workers: int = 0):
    """Per request on one GPU: vision encoding, LLM prefill and time to first token (their sum), for the
    InternVL3-8B-style model at 16/32/64 frames and the LiteFrame model at 64..512 frames, same LLM.
    `decode` (a video file, or "synthetic" for `synthetic_video`) adds the frame decoding before them, on
    `decode_workers` threads (0: one per CPU core); the decoded frames are then the request's input."""
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
        grid = nnx.merge(tower_graph, p).features(_normalise(frames), "projector")
        return grid.reshape(1, -1, grid.shape[-1])

    def liteframe_encoder(graph):
        @jax.jit
        def encode(p, frames):
            s, pr = nnx.merge(graph, p)
            clips = _normalise(frames).reshape(-1, student_cfg.num_frames, size, size, 3)
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
            dec_s, array = time_decode(decode, frames_n, size, decode_workers)
            frames = jnp.asarray(array)
            decoded = {"decode_ms": dec_s * 1e3, "decode_workers": decode_workers,
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


def profile_encoders(small, impl):
    """Kernel-level breakdown of the teacher's and the student's forward pass (`bench/profile.py`)."""
    from liteframe_jax.bench.profile import format_breakdown, kernel_breakdown
    vit, _, student, _, _ = paper_models(small)
    batch = 2 if small else 64
    for name, model, x in (
        ("teacher", InternVisionTower(vit, None, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl),
         _normalise(random_frames(1, batch, vit.image_size)[0])),
        ("student", LiteFrameStudent(student, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl),
         _normalise(random_frames(max(1, batch // student.num_frames), student.num_frames, student.image_size)))):
        graphdef, params = nnx.split(model)
        fn = jax.jit(lambda p, x, g=graphdef: nnx.merge(g, p)(x))
        breakdown = kernel_breakdown(fn, params, x)
        print(format_breakdown(f"{name} forward, {batch} frames", breakdown), flush=True)
        yield {"bench": "profile", "model": name, "batch_frames": batch, **breakdown}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m liteframe_jax.bench", description=__doc__)
    parser.add_argument("what", nargs="*", default=["all"],
                        choices=["all", "matmul", "encoders", "ctd", "lma", "pipeline", "latency", "probe",
                                 "profile", "scaling"])
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke run)")
    parser.add_argument("--attention", default="cudnn",
                        help="'cudnn' or 'xla'; encoders take a list (cudnn,xla), the other benches its first")
    parser.add_argument("--workers", default="0,4,8,14", help="Grain worker counts for the pipeline bench")
    parser.add_argument("--tail-kernel", default=None, choices=["xla", "pallas"],
                        help="the student's block-tail kernel in the CTD and scaling benches (default: 'pallas' "
                             "on a GPU, as the paper preset trains, else 'xla')")
    parser.add_argument("--teacher-mlp-kernel", default=None, choices=["xla", "pallas"],
                        help="the teacher's MLP in the CTD benches' online step (default: 'pallas', the fused "
                             "fc1 + GELU, on a Hopper GPU, else 'xla')")
    parser.add_argument("--decode", nargs="?", const="synthetic", default=None, metavar="VIDEO",
                        help="latency: decode each request's frames from VIDEO first (without VIDEO: a generated "
                             "2-minute 720p H.264 video), timed as a stage of its own")
    parser.add_argument("--decode-workers", type=int, default=0,
                        help="latency: threads decoding one request's frames (default: one per CPU core)")
    parser.add_argument("--profile-probe", action="store_true",
                        help="probe: a kernel breakdown of the plain-JAX probe and of ours, stage by stage")
    parser.add_argument("--out", default=None, help="write all rows as JSON here")
    args = parser.parse_args(argv)
    from absl import flags
    flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags; argparse owns this command line
    what = {"matmul", "encoders", "ctd", "lma", "pipeline", "latency"} if "all" in args.what else set(args.what)
    attn_impls = [None if a == "xla" else a for a in args.attention.split(",")]
    impl = attn_impls[0]
    tail_kernel = args.tail_kernel or default_tail_kernel(args.small)
    teacher_mlp_kernel = args.teacher_mlp_kernel or fused_mlp_kernel()
    from liteframe_jax.bench.probe import bench_probe  # it imports this module's helpers
    import flax
    header = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__, "flax": flax.__version__,
              "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
              "command": " ".join(sys.argv)}
    ceiling = matmul_ceiling(args.small)
    header["bf16_matmul_tflops"] = ceiling / 1e12
    print(json.dumps(header), flush=True)
    rows = []
    sections = [("encoders", lambda: bench_encoders(ceiling, args.small, attn_impls)),
                ("ctd", lambda: bench_ctd(ceiling, args.small, impl, tail_kernel, teacher_mlp_kernel)),
                ("lma", lambda: bench_lma(ceiling, args.small, impl)),
                ("pipeline", lambda: bench_pipeline(args.small, [int(w) for w in args.workers.split(",")])),
                ("profile", lambda: profile_encoders(args.small, impl)),
                ("scaling", lambda: bench_scaling(ceiling, args.small, impl, tail_kernel=tail_kernel)),
                ("probe", lambda: bench_probe(args.small, impl, sorted({"xla", fused_mlp_kernel()}, reverse=True),
                                              profile=args.profile_probe)),
                ("latency", lambda: bench_latency(ceiling, args.small, impl,
                                                  os.path.dirname(os.path.abspath(args.out)) if args.out else None,
                                                  args.decode, args.decode_workers))]
    for name, fn in sections:
        if name in what:
            for row in fn():
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    print("\n" + table(rows, ceiling))


def table(rows, ceiling) -> str:
    lines = [f"bf16 matmul ceiling: {ceiling / 1e12:.0f} TFLOP/s"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['bench']:9s} {r.get('model', r.get('mode', ''))} batch {r.get('batch', r.get('batch_frames'))}"
                         f": ERROR {r['error'][:120]}")
            continue
        what = r.get("model") or r.get("mode") or r.get("source") or f"workers={r.get('workers')}"
        figs = [f"{k}={r[k]:.3g}" for k in (
            "devices", "batch", "batch_frames", "frames", "visual_tokens", "tokens", "ms", "decode_ms", "encode_ms",
            "prefill_ms", "ttft_ms", "ttft_with_decode_ms", "ttft_vs_internvl_max_frames", "vs_probe", "frames_per_s",
            "samples_per_s", "tokens_per_s", "clips_per_s", "tflops", "mfu", "efficiency", "peak_gib", "step_gib",
            "step_gib_per_device", "compile_s")
                if isinstance(r.get(k), (int, float))]
        lines.append(f"{r['bench']:9s} {what} [{r.get('attention', '')}] " + " ".join(figs))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
