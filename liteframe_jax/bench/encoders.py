"""`bench encoders` and `bench profile`: the teacher towers and the students alone, forward, per frame."""

from __future__ import annotations

import jax
from flax import nnx

from liteframe_jax.bench import flops as flops_lib
from liteframe_jax.bench.common import (
    BF16,
    normalise_frames,
    paper_models,
    random_frames,
    timed,
    tubelet_student,
)
from liteframe_jax.models.kernels import fused_mlp
from liteframe_jax.models.internvit import InternVisionTower
from liteframe_jax.models.siglip import SiglipTower
from liteframe_jax.models.student import LiteFrameStudent


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
            ("SigLIP-So400m 384px (27x27 patches, configs/ctd.py:siglip's teacher)",
             lambda: SiglipTower(siglip, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl),
             flops_lib.siglip_per_frame(siglip), 1, siglip.image_size),
            ("LiteFrame student (paper), 8-frame clips", lambda: LiteFrameStudent(student, rngs=nnx.Rngs(0),
                                                                                  dtype=BF16, attn_impl=impl),
             flops_lib.student_per_clip(student), student.num_frames, student.image_size),
            ("LiteFrame student (paper_tubelet2), 8-frame clips",
             lambda: LiteFrameStudent(tubelet, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl),
             flops_lib.student_per_clip(tubelet), tubelet.num_frames, tubelet.image_size),
        ) + ((("InternViT-300M 448px (teacher), fused fc1+GELU (pallas)",
               lambda: InternVisionTower(vit, None, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl, mlp_kernel="pallas"),
               flops_lib.internvit_per_frame(vit), 1, vit.image_size),) if fused_mlp.device_problem(BF16) is None
             else ()) + tuple(
            (f"{name}, fused kernels (pallas: fc1+GELU, block tail)",
             lambda cfg=cfg: LiteFrameStudent(cfg, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl,
                                              mlp_kernel="pallas"),
             flops_lib.student_per_clip(cfg), cfg.num_frames, cfg.image_size)
            for name, cfg in (("LiteFrame student (paper)", student), ("LiteFrame student (paper_tubelet2)", tubelet))
            if fused_mlp.device_problem(BF16) is None):  # Hopper: rows with the fused kernels too
            model = build()
            graphdef, params = nnx.split(model)
            is_student = isinstance(model, LiteFrameStudent)
            # students are small enough that 256 frames leaves launch gaps: 512 fills the GPU
            for batch in batches + ([512] if is_student and not small else []):
                items = batch if not is_student else max(1, batch // frames_per_item)
                if is_student:
                    x = normalise_frames(random_frames(items, frames_per_item, size))
                else:
                    x = normalise_frames(random_frames(1, items, size)[0])
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


def profile_encoders(small, impl):
    """Kernel-level breakdown of the teacher's and the student's forward pass (`bench/profile.py`)."""
    from liteframe_jax.bench.profile import format_breakdown, kernel_breakdown
    vit, _, student, _, _ = paper_models(small)
    batch = 2 if small else 64
    for name, model, x in (
        ("teacher", InternVisionTower(vit, None, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl),
         normalise_frames(random_frames(1, batch, vit.image_size)[0])),
        ("student", LiteFrameStudent(student, rngs=nnx.Rngs(0), dtype=BF16, attn_impl=impl),
         normalise_frames(random_frames(max(1, batch // student.num_frames), student.num_frames, student.image_size)))):
        graphdef, params = nnx.split(model)
        fn = jax.jit(lambda p, x, g=graphdef: nnx.merge(g, p)(x))
        breakdown = kernel_breakdown(fn, params, x)
        print(format_breakdown(f"{name} forward, {batch} frames", breakdown), flush=True)
        yield {"bench": "profile", "model": name, "batch_frames": batch, **breakdown}
