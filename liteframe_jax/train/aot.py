"""Ahead-of-time compile of a training job's real step, for this host's devices or for a Cloud TPU topology
that this host does not have (`python -m liteframe_jax.main --config=... --compile_only [--topology=v5p-8]`).

The task, its state layout and its step are built exactly as training builds them (`state.layout`,
`step.compile_train_step`), with every weight as shapes only: nothing is initialised, no data or checkpoint is
read. The report: the mesh, per-chip memory against the chip's HBM, FLOPs and HBM bytes per step, the
collectives XLA placed (kind, count, bytes; over ICI or across slices over DCN), and a roofline estimate of the
step from the chip's published peak figures (core/hardware.py), whose compute share is a bound on MFU.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from liteframe_jax.core import hardware, hlo, paths, run_dir, sharding
from liteframe_jax.core.log import log
from liteframe_jax.core.tree import flatten, unflatten
from liteframe_jax.train import sizing
from liteframe_jax.train import state as state_lib
from liteframe_jax.train import step as step_lib

HEADROOM = 0.9  # a step planned to fill more of HBM than this leaves too little for fragmentation and the runtime
REPORT_FILE = run_dir.COMPILE_REPORT


def shapes_only(config) -> list[str]:
    """Point every pretrained source of the config at a random init of the preset's own architecture (the
    `paper` presets' architectures are the published checkpoints' shapes); a compile reads no weights. Returns
    what it changed, to be said."""
    changed = []

    def unset(section, field="init"):
        value = section.get(field)
        if value != "random":
            changed.append(f"{field} {value!r} -> random")
            section[field] = "random"

    if config.trainer == "ctd":
        unset(config.teacher)
    elif config.trainer == "lma":
        if config.encoder.kind == "student":
            unset(config.student)
        else:
            raise ValueError("--compile_only builds the LMA step of a student encoder (encoder.kind=student); the "
                             "InternViT encoder's shapes come from its folder")
        unset(config.llm)
        if not config.tokenizer:
            config.tokenizer = "bytes"  # the prompt's layout needs only the video placeholder
    return changed


@dataclasses.dataclass
class Target:
    """Where the step is compiled for: devices (this host's or a topology's) and what one chip is."""
    devices: list
    chip: hardware.Chip | None
    name: str
    slices: int

    @classmethod
    def of(cls, topology: str | None, num_slices: int = 1) -> "Target":
        if topology:
            chip, devices = hardware.topology_devices(topology, num_slices)
            return cls(devices, chip, hardware.topology_name(topology)[1], num_slices)
        devices = jax.devices()
        return cls(devices, hardware.chip_of(devices[0]), f"this host ({devices[0].device_kind})", 1)

    @property
    def hbm_bytes(self) -> float | None:
        if self.chip is not None:
            return self.chip.hbm_bytes
        return step_lib.device_memory_limit()


def build_task(config, mesh, workdir: str):
    if config.trainer == "ctd":
        from liteframe_jax.train.ctd import CTDTask
        return CTDTask(config, mesh, workdir, with_data=False, abstract=True)
    if config.trainer == "lma":
        from liteframe_jax.train.lma import LMATask
        return LMATask(config, mesh, workdir, with_data=False)
    raise ValueError(f"--compile_only compiles training jobs (ctd, lma), not {config.trainer!r}")


def compile_step(config, task):
    """The task's train step compiled from shapes alone: (CompiledStep, StateLayout)."""
    key = jax.random.key(config.seed)
    lay = state_lib.layout(config, task, key)
    whole = jax.eval_shape(lay.init_full, key)
    frozen_flat = flatten(state_lib.split(whole, lay.trainable)[1])
    frozen_sh = flatten(lay.frozen_model_sh)
    frozen_model = lay.frozen_as_kept(unflatten({k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=frozen_sh[k])
                                                 for k, v in frozen_flat.items()}))
    task_frozen, task_frozen_sh = task.frozen()
    step = step_lib.compile_train_step(config, task, lay, (task_frozen, frozen_model),
                                       (task_frozen_sh, lay.frozen_model_sh), key)
    return step, lay


def _cost(compiled) -> dict:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # not every backend counts
        return {}
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def roofline(chip: hardware.Chip | None, flops: float, hbm_bytes: float, traffic: dict) -> dict | None:
    """Seconds per step if each resource alone limited it, at the chip's published peaks; the step takes about
    the largest. `compute / step` bounds MFU (with XLA's FLOP count, which includes recomputation). XLA's bytes
    accessed count every fusion's operands and results, so the HBM term leans high."""
    if chip is None:
        return None
    terms = {"compute_s": flops / chip.bf16_flops, "hbm_s": hbm_bytes / chip.hbm_bytes_per_s,
             "ici_s": traffic.get("ici", 0.0) / chip.ici_bytes_per_s,
             "dcn_s": traffic.get("dcn", 0.0) / chip.dcn_bytes_per_s}
    step = max(terms.values())
    limit = max(terms, key=terms.get)[:-2]
    return {**terms, "step_s": step, "limited_by": limit, "mfu_bound": terms["compute_s"] / step if step else 0.0}


def report(config, target: Target, mesh, step, lay, changed: list[str]) -> dict:
    memory = step.memory
    need = step.step_gib * 2 ** 30 if memory else None
    hbm = target.hbm_bytes
    cost = _cost(step.compiled)
    # XLA counts a loop's body once: the micro-batches' scan holds nearly all the step's work (the optimizer's
    # update, outside it, is a few FLOPs per parameter), so the step's figures are the count times its trips
    accum = int(config.get("grad_accum_steps", 1))
    flops, hbm_traffic = (accum * float(cost.get(k, 0.0)) for k in ("flops", "bytes accessed"))
    slice_of = [getattr(d, "slice_index", 0) or 0 for d in mesh.devices.flat]
    found = hlo.in_hlo(step.compiled.as_text(), slice_of, target.slices)
    traffic = hlo.traffic(found)
    out = {
        "preset": f"{config.trainer}:{config.get('preset', '')}", "target": target.name, "slices": target.slices,
        "chip": target.chip.name if target.chip else None, "devices": len(target.devices),
        "mesh": dict(mesh.shape), "batch_size": int(config.batch_size),
        "grad_accum_steps": int(config.get("grad_accum_steps", 1)), "remat": config.get("remat"),
        "trained_params": lay.num_trained, "params": lay.num_params, "shapes_only": changed,
        "compile_seconds": step.compile_seconds,
        "memory_bytes": memory, "step_bytes": need, "hbm_bytes": hbm,
        "fits": None if need is None or not hbm else need <= HEADROOM * hbm,
        "hbm_fraction": None if need is None or not hbm else need / hbm,
        "flops_per_device": flops, "hbm_bytes_accessed": hbm_traffic,
        "collectives": hlo.summary(found), "collective_traffic_bytes": traffic,
        "roofline": roofline(target.chip, flops, hbm_traffic, traffic),
    }
    if config.get("scan_layers", False):
        # the LLM's layers are a loop inside the micro-batches' loop: XLA counts one layer of it, and how much of
        # the step that layer is cannot be read off its count, so no figure here is scaled up to a guess
        out["undercounted"] = ("scan_layers: XLA counts one of the LLM's layers (a loop); FLOPs and HBM traffic "
                               "leave out the others, so no roofline (compile with scan_layers=False for them)")
        out["roofline"] = None
    return out


def describe(r: dict) -> str:
    gib = lambda b: f"{b / 2 ** 30:.2f} GiB"
    lines = [f"compiled {r['preset']} for {r['target']}" + (f" x {r['slices']} slices" if r["slices"] > 1 else "")
             + f" ({r['devices']} devices) in {r['compile_seconds']:.0f}s",
             f"  mesh {r['mesh']}, batch {r['batch_size']} (grad_accum_steps {r['grad_accum_steps']}, remat "
             f"{r['remat']}), {r['trained_params'] / 1e6:.1f}M of {r['params'] / 1e6:.1f}M parameters trained"]
    m = r["memory_bytes"]
    if m:
        of = (f" of {gib(r['hbm_bytes'])} HBM ({100 * r['hbm_fraction']:.0f}%: "
              f"{'fits' if r['fits'] else 'does NOT fit'} within {100 * HEADROOM:.0f}%)") if r["hbm_bytes"] else ""
        lines.append(f"  per chip: {gib(r['step_bytes'])}{of}; arguments {gib(m['arguments'])}, outputs "
                     f"{gib(m['outputs'])}, temporaries {gib(m['temporaries'])}, aliased {gib(m['aliased'])}")
    lines.append(f"  per chip and step: {r['flops_per_device'] / 1e12:.2f} TFLOP, "
                 f"{r['hbm_bytes_accessed'] / 1e9:.1f} GB of HBM traffic"
                 + (f" (a lower bound: {r['undercounted']})" if r.get("undercounted") else ""))
    for kind, c in r["collectives"].items():
        lines.append(f"  {kind}: {c['count']} ({c['bytes'] / 1e9:.2f} GB; across slices {c['dcn_count']})")
    if not r["collectives"]:
        lines.append("  no collectives")
    rf = r["roofline"]
    if rf:
        lines.append(f"  roofline: compute {rf['compute_s'] * 1e3:.1f} ms, HBM {rf['hbm_s'] * 1e3:.1f} ms, ICI "
                     f"{rf['ici_s'] * 1e3:.1f} ms, DCN {rf['dcn_s'] * 1e3:.1f} ms -> about "
                     f"{rf['step_s'] * 1e3:.1f} ms per step ({rf['limited_by']}-bound), MFU at most "
                     f"{100 * rf['mfu_bound']:.0f}% (HBM: XLA's bytes accessed, every fusion's operands and "
                     "results, more than reaches HBM where data stays on the chip)")
    return "\n".join(lines)


def fit_error(r: dict, config) -> MemoryError:
    return MemoryError(
        f"{r['preset']} needs {r['step_bytes'] / 2 ** 30:.2f} GiB per chip on {r['target']}, more than "
        f"{100 * HEADROOM:.0f}% of its {r['hbm_bytes'] / 2 ** 30:.2f} GiB. {step_lib.memory_advice(config)}")


def compiled_report(config, target: Target, workdir: str, changed: list[str] = ()) -> dict:
    """Build the task for `target`'s devices from shapes alone, compile its step and report on it."""
    mesh = sharding.make_mesh(config.mesh, target.devices)
    task = build_task(config, mesh, workdir)
    step, lay = compile_step(config, task)
    return report(config, target, mesh, step, lay, list(changed))


def fits_on(target: Target, workdir: str, changed: list[str] = (), last: dict | None = None):
    """A `sizing` check: config -> (whether its compiled step fits `target`, what it needs); the last report
    is kept in `last['report']`."""
    def fits(config) -> tuple[bool, str]:
        try:
            r = compiled_report(config, target, workdir, changed)
        except MemoryError as e:  # the compiler itself refused it
            return False, str(e).split(". Change")[0]
        if last is not None:
            last["report"] = r
        if r["step_bytes"] is None or not r["hbm_bytes"]:
            return True, "an unknown amount (this backend reports no memory)"
        return bool(r["fits"]), f"{r['step_bytes'] / 2 ** 30:.2f} GiB of {r['hbm_bytes'] / 2 ** 30:.2f} per chip"
    return fits


def compile_only(config, workdir: str, topology: str | None = None, num_slices: int = 1,
                 answer_frames: tuple[int, ...] = (), answer_only: bool = False) -> dict:
    """Compile the job's step for `topology` (or this host), sized for its chips (train/sizing.py), write
    WORKDIR/compile_report.json, print the report; a step that does not fit ends with the error naming the
    fields to change. `answer_frames` (LMA): also answering a question at those frame counts; `answer_only`:
    answering alone, on the config's mesh (the training step is neither sized nor compiled)."""
    target = Target.of(topology, num_slices)
    if answer_frames and config.trainer != "lma":
        raise ValueError("--answer_frames compiles a Video LLM's answering: give an LMA config")
    if answer_only and not answer_frames:
        raise ValueError("--answer_only compiles answering alone: give the frame counts, e.g. --answer_frames=64,512")
    changed = shapes_only(config)
    if changed:
        log(f"[compile] shapes only, no weights read: {', '.join(changed)}")
    if answer_only:
        mesh = sharding.make_mesh(config.mesh, target.devices)
        task = build_task(config, mesh, workdir)
        r = {"preset": config.get("preset", ""), "target": target.name, "mesh": dict(mesh.shape),
             "answering": [compile_answering(config, target, task, int(n)) for n in answer_frames]}
        paths.makedirs(workdir)
        paths.write_text(run_dir.RunDir(workdir).compile_report, json.dumps(r, indent=1, default=_jsonable))
        log(f"[compile] {config.trainer}:{r['preset']} answering on {target.name}, mesh {r['mesh']}\n"
            + describe_answering(r["answering"]))
        return r
    last: dict = {}
    sizing.apply(config, target.devices, fits_on(target, workdir, changed, last))
    # the search's last compile is of the config it settled on
    r = last.get("report") or compiled_report(config, target, workdir, changed)
    if answer_frames:
        task = build_task(config, sharding.make_mesh(config.mesh, target.devices), workdir)
        r["answering"] = [compile_answering(config, target, task, int(n)) for n in answer_frames]
    report = run_dir.RunDir(workdir).compile_report
    paths.makedirs(workdir)
    paths.write_text(report, json.dumps(r, indent=1, default=_jsonable))
    log(describe(r))
    if r.get("answering"):
        log(describe_answering(r["answering"]))
    log(f"[compile] report: {report}")
    if r["fits"] is False and config.get("check_memory", True):
        raise fit_error(r, config)
    return r


def compile_answering(config, target: Target, task, frames: int, text_tokens: int = 256) -> dict:
    """Answering one question about one video at `frames` frames, as `Answerer` runs it: the encoder over the
    whole video, then the prompt's prefill and first token (`models.generate` with one new token), compiled
    for `target` with the model's parameters as shapes: per-chip memory and FLOPs of each."""
    from flax import nnx

    from liteframe_jax.assembly.answering import PROMPT_WIDTH_STEP, Answerer
    from liteframe_jax.models import kernel_choice
    from liteframe_jax.models.generate import generate
    mesh = task.mesh
    spec = dataclasses.replace(task.spec, num_frames=frames)
    k = task.kernels
    graphdef, state = nnx.split(nnx.eval_shape(lambda: spec.build(
        rngs=nnx.Rngs(0), dtype=task.dtype, attn_impl=k["attention"], mlp_kernel=k["mlp"],
        tail_kernel=k["block_tail"], mesh=mesh, video_token_id=task.tokenizer.video_token_id,
        tower_attn_impl=kernel_choice.tower_attention_impl(k))))
    shardings = sharding.param_shardings(state, sharding.rules_for(config), mesh)
    params = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          nnx.to_pure_dict(state), shardings)
    answerer = Answerer(spec, task.tokenizer, graphdef, task.dtype)
    one = sharding.replicated(mesh)
    s = spec.encoder.image_size
    video = jax.ShapeDtypeStruct((1, frames, s, s, 3), jnp.uint8, sharding=one)
    encode = _compile_or_refusal(answerer._encode.lower(params, video))
    width = -(-(spec.num_visual_tokens + text_tokens) // PROMPT_WIDTH_STEP) * PROMPT_WIDTH_STEP
    llm_width = spec.llm.hidden_size
    stops = jnp.asarray(task.tokenizer.stop_ids)

    def first_token(p, ids, valid, visual):
        embeds = spec.embeds_with(nnx.merge(graphdef, p), ids, visual)
        llm_graphdef, llm_params = nnx.split(nnx.merge(graphdef, p).llm)
        return generate(llm_graphdef, llm_params, embeds, valid, stops, jax.random.key(0), max_new_tokens=1)

    ids = jax.ShapeDtypeStruct((1, width), jnp.int32, sharding=one)
    valid = jax.ShapeDtypeStruct((1, width), jnp.bool_, sharding=one)
    visual = jax.ShapeDtypeStruct((1, spec.num_visual_tokens, llm_width), task.dtype, sharding=one)
    prefill = _compile_or_refusal(jax.jit(first_token).lower(params, ids, valid, visual))
    hbm = target.hbm_bytes
    out = {"frames": frames, "visual_tokens": spec.num_visual_tokens, "prompt_tokens": width}
    for name, compiled in (("encode", encode), ("prefill", prefill)):
        if isinstance(compiled, str):  # the compiler refused it: it cannot fit the chip
            out[name] = {"step_bytes": None, "fits": False, "refused": compiled, "flops_per_device": 0.0,
                         "seconds_bound": None}
            continue
        m = compiled.memory_analysis()
        need = None if m is None else m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
        flops = float(_cost(compiled).get("flops", 0.0))
        rf = roofline(target.chip, flops, float(_cost(compiled).get("bytes accessed", 0.0)), {})
        out[name] = {"step_bytes": need, "fits": None if need is None or not hbm else need <= HEADROOM * hbm,
                     "flops_per_device": flops, "seconds_bound": rf["step_s"] if rf else None}
    return out


def _compile_or_refusal(lowered):
    """The compiled program, or the compiler's one-line refusal where it cannot fit the device's memory (a TPU
    compiler refuses such a program; the rest of the report still comes)."""
    try:
        return lowered.compile()
    except Exception as e:
        text = str(e)
        if "RESOURCE_EXHAUSTED" not in text and "out of memory" not in text.lower():
            raise
        return text.strip().splitlines()[0][:300]


def describe_answering(rows: list[dict]) -> str:
    lines = ["answering one video (encode the whole video, then prefill and the first token):"]
    for r in rows:
        parts = []
        for name in ("encode", "prefill"):
            x = r[name]
            if x.get("refused"):
                parts.append(f"{name} does not fit ({x['refused']})")
                continue
            mem = "?" if x["step_bytes"] is None else f"{x['step_bytes'] / 2 ** 30:.2f} GiB"
            bound = f", at least {x['seconds_bound'] * 1e3:.1f} ms" if x["seconds_bound"] else ""
            parts.append(f"{name} {mem} per chip, {x['flops_per_device'] / 1e12:.2f} TFLOP{bound}")
        lines.append(f"  {r['frames']} frames ({r['visual_tokens']} visual tokens, prompt {r['prompt_tokens']}): "
                     + "; ".join(parts))
    return "\n".join(lines)


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    return str(x)
