"""What every bench shares: timing, the measured matmul ceiling, synthetic frames, and the paper's model sizes
(or, with `--small`, the model configs' `tiny` presets)."""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from liteframe_jax.core.configs import load_config_file
from liteframe_jax.models.kernels import block_tail, fused_mlp
from liteframe_jax.models.internvit import InternVitConfig, InternVLHeadConfig
from liteframe_jax.models.qwen2 import Qwen2Config
from liteframe_jax.models.siglip import SiglipVitConfig
from liteframe_jax.models.student import StudentConfig

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
    """uint8 (batch, t, size, size, 3) on the default device, drawn on the host: a jitted draw compiles once
    per shape, seconds on a CPU for frames that only need to be there."""
    frames = np.random.default_rng(seed).integers(0, 256, (batch, t, size, size, 3), np.uint8)
    return jnp.asarray(frames)


def normalise_frames(frames):
    return ((frames.astype(jnp.float32) / 255.0 - 0.45) / 0.225).astype(BF16)


def paper_models(small: bool):
    """(teacher ViT, its head, student, the SigLIP-So400m-384 tower of configs/ctd.py:siglip, WAP window) as
    configs/ctd.py:paper trains them, or the `tiny` presets (the head as wide as the tiny LLM)."""
    if small:
        return (InternVitConfig.preset("tiny"), InternVLHeadConfig(out_features=Qwen2Config.preset("tiny").hidden_size),
                StudentConfig.preset("tiny"), SiglipVitConfig.preset("tiny"), (4, 1, 1))
    ctd = load_config_file("ctd", "paper")
    vit = InternVitConfig(**ctd.teacher.vit.to_dict())
    head = InternVLHeadConfig(**ctd.teacher.head.to_dict())
    student = StudentConfig.from_dict({**ctd.student.to_dict(), "num_frames": ctd.data.num_frames})
    siglip = SiglipVitConfig(**load_config_file("ctd", "siglip").teacher.vit.to_dict())
    return vit, head, student, siglip, tuple(ctd.compression.window)


def tubelet_student(small: bool) -> StudentConfig:
    """The `paper_tubelet2` student (2-frame tubelets), or the `tiny_tubelet2` preset."""
    if small:
        return StudentConfig.preset("tiny_tubelet2")
    ctd = load_config_file("ctd", "paper_tubelet2")
    return StudentConfig.from_dict({**ctd.student.to_dict(), "num_frames": ctd.data.num_frames})


def is_oom(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def default_tail_kernel(small: bool) -> str:
    """The student's block-tail kernel the `paper` CTD preset trains with where this process can run it."""
    return "xla" if small or block_tail.device_problem() else "pallas"


def fused_mlp_kernel() -> str:
    """The models' MLP kernel in the inference benches: the fused fc1 + GELU where this process runs it (tiny
    `--small` layers have too few rows for it and keep XLA's path either way)."""
    return "xla" if fused_mlp.device_problem(BF16) else "pallas"


def qwen25_7b_config(small: bool) -> Qwen2Config:
    """The LLM of InternVL3-8B and of the LiteFrame model in the latency benches, or the `tiny` preset."""
    return Qwen2Config.preset("tiny" if small else "qwen2.5-7b")
