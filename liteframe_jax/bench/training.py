"""`bench ctd` and `bench lma`: the train step that `python -m liteframe_jax.main` runs, timed.

Each row builds the real `CTDTask` / `LMATask` from the `paper` preset (random weights instead of pretrained
ones, no data: a synthetic batch of the task's own batch spec), lays out and compiles its state and step with
`train/state.py` and `train/step.py`, as training does, and times the compiled step with its state donated
from call to call.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from liteframe_jax.bench import flops as flops_lib
from liteframe_jax.bench.common import is_oom, paper_models, qwen25_7b_config, timed
from liteframe_jax.core import sharding
from liteframe_jax.core.configs import load_config_file
from liteframe_jax.train import state as state_lib
from liteframe_jax.train.step import compile_train_step


def _student_fields(student) -> dict:
    """A StudentConfig as the configs hold it: without num_frames (which is `data.num_frames`)."""
    return {k: v for k, v in dataclasses.asdict(student).items() if k != "num_frames"}


def ctd_config(small: bool, impl, tail_kernel: str, teacher_mlp_kernel: str, batch: int, devices: int = 1):
    """configs/ctd.py:paper with a random teacher (or the `tiny` presets), `batch` clips, data-parallel over
    `devices`."""
    c = load_config_file("ctd", "paper")
    c.teacher.init = "random"
    c.kernels.update(attention=impl, mlp=teacher_mlp_kernel, block_tail=tail_kernel)
    c.batch_size = batch
    c.mesh.num_devices = devices
    if small:
        vit, head, student, _, window = paper_models(True)
        c.teacher.vit.update(dataclasses.asdict(vit))
        c.teacher.head.out_features = head.out_features
        c.student.update(_student_fields(student))
        c.compression.window = window
    return c


def lma_config(small: bool, impl, batch: int, remat: str, trainable: str | None = None, scan_layers: bool = False,
               encoder_clips_per_pass: int = 0):
    """configs/lma.py:paper with random weights: the `paper` CTD student, a Qwen2.5-7B-shaped LLM (152k
    vocabulary) with the preset's LoRA, 512 frames per video (or the `tiny` presets)."""
    c = load_config_file("lma", "paper")
    _, _, student, _, _ = paper_models(small)
    llm = qwen25_7b_config(small)
    c.student.init = "random"
    c.student.num_frames = student.num_frames
    c.student.arch.update(_student_fields(student))
    c.llm.init = "random"
    c.llm.arch.update(dataclasses.asdict(llm))
    c.tokenizer = "bytes"  # the prompt's layout needs only the video placeholder; the vocabulary is the LLM's
    c.kernels.attention = impl
    c.remat = remat
    c.scan_layers = scan_layers
    c.encoder_clips_per_pass = encoder_clips_per_pass
    c.batch_size = batch
    c.mesh.num_devices = 1
    if trainable:
        c.train.trainable = trainable
    if small:
        c.data.num_frames = 16
        c.data.max_answer_tokens = 8
        c.llm.lora.rank = 4
    return c


def synthetic_batch(task, spec: dict, answer_tokens: int) -> dict:
    """Random frames; for LMA, rows of exactly the prompt's visual placeholders, text, and `answer_tokens`
    answer tokens at the end (the loss positions)."""
    out = {}
    rng = np.random.default_rng(0)
    for k, v in spec.items():
        if v.dtype == jnp.uint8:
            out[k] = rng.integers(0, 256, v.shape, np.uint8)
        elif k == "targets":  # CTD with cached targets
            out[k] = rng.normal(size=v.shape).astype(v.dtype)
    if "tokens" in spec:
        b, length = spec["tokens"].shape
        n_video = task.spec.num_visual_tokens
        tokens = rng.integers(0, 256, (b, length)).astype(np.int32)
        tokens[:, 8:8 + n_video] = task.tokenizer.video_token_id
        loss_mask = np.zeros((b, length), bool)
        loss_mask[:, length - answer_tokens:] = True
        out.update(tokens=tokens, loss_mask=loss_mask, valid=np.ones((b, length), bool))
    return out


def time_train_step(config, task, answer_tokens: int = 0, iters: int = 10) -> dict:
    """Lay out, initialise (random), compile and time the task's train step; seconds per step, compile seconds
    and the compiled step's memory per device."""
    key = jax.random.key(0)
    layout = state_lib.layout(config, task, key)
    params, frozen_model = state_lib.split(layout.random_model(key), layout.trainable)
    frozen_model = layout.frozen_as_kept(frozen_model)
    state = jax.jit(layout.fresh_state, out_shardings=layout.state_sh, donate_argnums=0)(params)
    task_frozen, task_frozen_sh = task.frozen()
    frozen, frozen_sh = (task_frozen, frozen_model), (task_frozen_sh, layout.frozen_model_sh)
    step = compile_train_step(config, task, layout, frozen, frozen_sh, key)
    batch = sharding.global_batch(synthetic_batch(task, step.batch_spec, answer_tokens), task.mesh,
                                 task.over_context())
    seconds = timed(lambda s: step(s, frozen, batch), state, iters=iters, carry=True)
    return {"sec": seconds, "compile_s": step.compile_seconds, "step_gib": step.step_gib,
            "trained_params": layout.num_trained, "params": layout.num_params,
            "batch_devices": len(next(iter(step.batch_sh.values())).device_set), "trainable": layout.trainable}


def bench_ctd(ceiling, small, impl, tail_kernel, teacher_mlp_kernel="xla", modes=("online teacher",), batches=None):
    """The CTD trainer's compiled step at several batches; mode 'cached targets' is the same run reading its
    targets from a target cache (`--config.targets=cache:DIR`): the teacher does not run in the step."""
    from liteframe_jax.train.ctd import CTDTask
    for mode in modes:
        for batch in batches or ([2] if small else [16, 32, 64]):
            config = ctd_config(small, impl, tail_kernel, teacher_mlp_kernel, batch)
            if mode == "cached targets":
                config.targets = "cache:unused"  # with_data=False: the step's batch carries the targets
            try:
                task = CTDTask(config, sharding.make_mesh(config.mesh), tempfile.mkdtemp(), with_data=False)
                r = time_train_step(config, task)
            except Exception as e:
                yield {"bench": "ctd_step", "mode": mode, "batch": batch, "error": f"{type(e).__name__}: {str(e)[:300]}"}
                if is_oom(e):
                    break  # the largest batch that fits is the previous row
                continue
            t = task.num_frames
            teacher = 0 if mode == "cached targets" else flops_lib.teacher_per_frame(task.teacher_vit_config,
                                                                                     task.target_shape[-1]) * t
            per_sample = teacher + 3 * flops_lib.student_per_clip(task.student_cfg)
            sec = r["sec"]
            yield {"bench": "ctd_step", "mode": mode, "attention": impl or "xla",
                   "student_tail_kernel": tail_kernel, "teacher_mlp_kernel": teacher_mlp_kernel, "batch": batch,
                   "ms": sec * 1e3, "samples_per_s": batch / sec, "frames_per_s": batch * t / sec,
                   "tflops": per_sample * batch / sec / 1e12, "mfu": per_sample * batch / sec / ceiling,
                   "compile_s": r["compile_s"], "step_gib": r["step_gib"], "step": "CTDTask (configs/ctd.py:paper)"}
            del task


def lma_plans(small: bool):
    """(batch, remat, trainable, scan_layers, encoder_clips_per_pass) rows: the preset's LoRA step without and
    with rematerialisation, then the whole LLM trained (`full`)."""
    if small:
        return [(1, "none", None, False, 0), (1, "full", "full", False, 0)]
    return [(1, "none", None, False, 0), (2, "full", None, False, 0), (4, "full", None, False, 0),
            (1, "full", "full", False, 0)]


def parse_plans(text: str) -> list[tuple]:
    """'1:full,2:full:full,1:full:scan:enc8' -> rows of `lma_plans` (batch:remat[:trainable][:scan][:encN]:
    `scan` sets scan_layers, `encN` encoder_clips_per_pass=N)."""
    plans = []
    for item in text.split(","):
        batch, remat, *rest = item.split(":")
        trainable, scan, clips = None, False, 0
        for part in rest:
            if part == "scan":
                scan = True
            elif re.fullmatch(r"enc\d+", part):
                clips = int(part[3:])
            elif part:
                trainable = part
        plans.append((int(batch), remat, trainable, scan, clips))
    return plans


def bench_lma(ceiling, small, impl, plans: list[tuple] | None = None):
    from liteframe_jax.train.lma import LMATask
    answer_tokens = 8 if small else 64
    for batch, remat, trainable, scan, clips in plans or lma_plans(small):
        config = lma_config(small, impl, batch, remat, trainable, scan, clips)
        name = config.train.trainable
        try:
            task = LMATask(config, sharding.make_mesh(config.mesh), tempfile.mkdtemp(), with_data=False)
            # the shortest bucket that holds the video and some text: the shape a 512-frame row trains at
            config.data.buckets = (task.spec.num_visual_tokens + 256,)
            r = time_train_step(config, task, answer_tokens, iters=3 if small else 5)
        except Exception as e:
            yield {"bench": "lma_step", "batch": batch, "remat": remat, "trainable": name, "scan_layers": scan,
                   "encoder_clips_per_pass": clips, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            continue
        spec, seq = task.spec, config.data.buckets[0]
        llm = spec.llm
        student = spec.encoder.arch
        llm_full = any(p.startswith("llm/") and "/lora_" not in p for p in r["trainable"])
        # forward + the gradient of the activations; + the gradient of the weights where the LLM itself trains
        llm_fl = (3 if llm_full else 2) * flops_lib.qwen2_per_sequence(llm, seq, answer_tokens)
        width = spec.encoder.token_grid[2]
        proj_fl = 3 * 2 * spec.num_visual_tokens * (width + llm.hidden_size) * llm.hidden_size
        student_trains = any(p.startswith("encoder/") for p in r["trainable"])
        student_fl = (3 if student_trains else 1) * spec.clips * flops_lib.student_per_clip(student)
        per_sample = llm_fl + proj_fl + student_fl
        sec = r["sec"]
        yield {"bench": "lma_step", "model": f"Qwen2-{llm.hidden_size}x{llm.num_layers} + student, "
               f"{spec.num_frames} frames, trainable={name}, remat={remat}", "attention": impl or "xla",
               "scan_layers": scan, "encoder_clips_per_pass": clips, "batch": batch, "seq": seq,
               "answer_tokens": answer_tokens, "ms": sec * 1e3,
               "tokens_per_s": batch * seq / sec, "tflops": per_sample * batch / sec / 1e12,
               "mfu": per_sample * batch / sec / ceiling, "compile_s": r["compile_s"], "step_gib": r["step_gib"],
               "trained_params_m": r["trained_params"] / 1e6, "step": "LMATask (configs/lma.py:paper)"}
        del task
