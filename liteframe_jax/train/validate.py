"""Config values checked before anything is built: one table of rules over the fields, then the rules that
relate fields to each other and to the devices (the batch over the data-parallel devices and the gradient
accumulation steps, an LMA video's frames over the student's clips, the mesh over the devices).

Each problem names the field as it is given on the command line, its value and what would be valid; all of
them are said at once, in one line (`ConfigError`, a ValueError: the entry point exits with status 2). A field
that a config does not have is not checked, so one table serves every training job.
"""

from __future__ import annotations

import math

from liteframe_jax.core import paths
from liteframe_jax.core.run_dir import RunDir


class ConfigError(ValueError):
    """Values of the config that no run can use."""


def _whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# (field, whether a value is valid, what is valid): the fields every training job may have
POSITIVE = (lambda v: _whole(v) and v > 0, "a whole number above 0")
NOT_NEGATIVE = (lambda v: _whole(v) and v >= 0, "a whole number, 0 or more")
FRACTION = (lambda v: _number(v) and 0.0 <= v <= 1.0, "a number from 0 to 1")
BETA = (lambda v: _number(v) and 0.0 <= v < 1.0, "a number from 0 up to (not including) 1")
ABOVE_ZERO = (lambda v: _number(v) and v > 0, "a number above 0")
AT_LEAST_ZERO = (lambda v: _number(v) and v >= 0, "a number, 0 or more")
UNSET_OR_NOT_NEGATIVE = (lambda v: _whole(v) and v >= -1, "-1 (follow the run) or a whole number, 0 or more")
UNSET_OR_POSITIVE = (lambda v: _whole(v) and (v == -1 or v > 0), "-1 (the run's total_steps) or a whole number above 0")
AXIS = (lambda v: _whole(v) and (v == -1 or v > 0), "-1 (the remaining devices) or a whole number above 0")

RULES = (
    ("total_steps", *POSITIVE), ("batch_size", *POSITIVE), ("grad_accum_steps", *POSITIVE),
    ("log_every", *POSITIVE), ("checkpoint_every", *POSITIVE), ("keep_checkpoints", *POSITIVE),
    ("nan_patience", *POSITIVE), ("eval_every", *NOT_NEGATIVE), ("eval_batch_size", *POSITIVE),
    ("shard_size", *POSITIVE),
    ("optimizer.lr", *ABOVE_ZERO), ("optimizer.warmup_fraction", *FRACTION),
    ("optimizer.warmup_steps", *UNSET_OR_NOT_NEGATIVE), ("optimizer.decay_steps", *UNSET_OR_POSITIVE),
    ("optimizer.end_lr_fraction", *FRACTION), ("optimizer.b1", *BETA), ("optimizer.b2", *BETA),
    ("optimizer.eps", *ABOVE_ZERO), ("optimizer.weight_decay", *AT_LEAST_ZERO),
    ("optimizer.grad_clip", (lambda v: _number(v) and v >= 0), "a number, 0 or more (0: no clipping)"),
    ("loss.mse_weight", *AT_LEAST_ZERO), ("loss.cosine_weight", *AT_LEAST_ZERO), ("loss.clip_sigma", *AT_LEAST_ZERO),
    ("data.num_frames", *POSITIVE), ("data.frame_stride", *POSITIVE), ("data.clip_hop", *NOT_NEGATIVE),
    ("data.num_workers", *NOT_NEGATIVE), ("data.read_threads", *POSITIVE), ("data.prefetch", *POSITIVE),
    ("data.probe_threads", *POSITIVE), ("data.max_bad_fraction", *FRACTION),
    ("data.max_bad_in_a_row", (lambda v: _whole(v) and v >= 0), "a whole number, 0 or more (0: never stop)"),
    ("data.max_video_minutes", (lambda v: _number(v) and v >= 0), "a number of minutes, 0 or more (0: no limit)"),
    ("data.max_length", *POSITIVE), ("data.max_answer_tokens", *POSITIVE),
    ("student.num_frames", *POSITIVE), ("student.demo_ctd_steps", *POSITIVE),
    ("llm.lora.rank", *NOT_NEGATIVE), ("llm.lora.alpha", *ABOVE_ZERO),
    ("mesh.data", *AXIS), ("mesh.fsdp", *AXIS), ("mesh.tensor", *AXIS),
    ("mesh.num_devices", (lambda v: _whole(v) and (v == -1 or v > 0)), "-1 (every device) or a whole number above 0"),
    ("resume_step", (lambda v: v is None or (_whole(v) and v >= 0)), "unset (the latest checkpoint) or a saved step"),
)

_MISSING = object()


def _get(config, field: str):
    node = config
    for key in field.split("."):
        try:
            node = node[key]
        except (KeyError, AttributeError, TypeError):
            return _MISSING
    return node


def _problem(field: str, value, valid: str) -> str:
    return f"--config.{field}={value!r}: must be {valid}"


def _mesh_problems(config, device_count: int) -> tuple[list[str], int | None]:
    """(problems, the data-parallel size data x fsdp) of `config.mesh` on `device_count` devices."""
    mesh = config.mesh
    n = int(mesh.get("num_devices", -1))
    used = n if n > 0 else device_count
    if n > device_count:
        return [_problem("mesh.num_devices", n, f"at most the {device_count} devices there are, or -1")], None
    sizes = {a: int(mesh[a]) for a in ("data", "fsdp", "tensor")}
    context = int(mesh.get("context", 1))
    if context < 1:
        return [_problem("mesh.context", context, "1 (no sequence split) or the devices that share each row")], None
    if context > 1:  # sequence parallelism: a 4th mesh axis (core/sharding.py), named only where it is used
        sizes["context"] = context
    free = [a for a, s in sizes.items() if s == -1]
    if len(free) > 1:
        return [f"--config.mesh: at most one of data, fsdp, tensor may be -1, got {sizes}"], None
    fixed = math.prod(s for s in sizes.values() if s != -1)
    if free and used % fixed:
        return [f"--config.mesh: {used} devices cannot be split into {sizes}: the sizes other than -1 must multiply "
                f"to a divisor of {used}"], None
    if not free and fixed != used:
        return [f"--config.mesh: {sizes} needs {fixed} devices, {used} are in use: give sizes that multiply to "
                f"{used}, set one to -1, or set --config.mesh.num_devices={fixed}" +
                (f" (at most {device_count})" if fixed > device_count else "")], None
    if free:
        sizes[free[0]] = used // fixed
    return [], sizes["data"] * sizes["fsdp"]


def _clip_frames(config) -> int | None:
    """The frames of one student clip in an LMA run: from the config for a random student, from the CTD run's
    spec.json (or its config.json) for a trained one, the CTD demo's for 'demo_ctd'; None when not known yet."""
    init = _get(config, "student.init")
    if init == "random":
        return int(config.student.num_frames)
    if init == "demo_ctd":
        return 8  # configs/ctd.py demo: data.num_frames
    if isinstance(init, str) and init:
        for read, keys in ((RunDir.read_spec, ("student", "num_frames")), (RunDir.read_config, ("data", "num_frames"))):
            try:
                node = read(RunDir(init))
                for key in keys:
                    node = node[key]
                return int(node)
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return None


def problems(config, device_count: int, process_count: int = 1) -> list[str]:
    """Every problem of a training job's config on this many devices and processes ([] when there is none)."""
    found = []
    for field, ok, valid in RULES:
        value = _get(config, field)
        if value is not _MISSING and value is not None and not ok(value):
            found.append(_problem(field, value, valid))
    if found:  # the rules below read these fields as numbers
        return found

    trainer = _get(config, "trainer")
    data_parallel = None
    if _get(config, "mesh") is not _MISSING:
        mesh_found, data_parallel = _mesh_problems(config, device_count)
        found += mesh_found
    if trainer in ("ctd", "lma"):  # the global batch (the target cache's is per process and call)
        batch, accum = config.batch_size, _get(config, "grad_accum_steps")
        step = (1 if accum is _MISSING else accum) * (data_parallel or 1)
        if batch % step:
            low, high = (batch // step) * step, (batch // step + 1) * step
            found.append(_problem("batch_size", batch, f"a multiple of {step} (grad_accum_steps x the data-parallel "
                                  f"devices, mesh.data x mesh.fsdp = {data_parallel or 1}), e.g. {low or high}" +
                                  (f" or {high}" if low else "")))
        elif batch % min(process_count, data_parallel or process_count):
            # processes that share rows (a row's chips in several processes) read the same share
            readers = min(process_count, data_parallel or process_count)
            found.append(_problem("batch_size", batch, f"a multiple of the {readers} processes that read different "
                                  "rows (each reads an equal share)"))

    context = _get(config, "mesh.context")
    if context is not _MISSING and int(context) > 1:  # sequence parallelism splits each row's tokens
        if trainer != "lma":
            found.append(_problem("mesh.context", context, "1: only LMA splits its rows' tokens over devices"))
        elif any(int(b) % int(context) for b in config.data.buckets):
            found.append(_problem("data.buckets", tuple(config.data.buckets), f"multiples of mesh.context={context} "
                                  "(each row's tokens are split evenly over those devices)"))

    if trainer == "lma" and _get(config, "encoder.kind") == "student":
        clip = _clip_frames(config)
        frames = int(config.data.num_frames)
        if clip and frames % clip:
            low, high = (frames // clip) * clip, (frames // clip + 1) * clip
            found.append(_problem("data.num_frames", frames, f"a whole number of the student's {clip}-frame clips, "
                                  f"e.g. {low or high}" + (f" or {high}" if low else "")))
    return found


def check(config, device_count: int, process_count: int = 1) -> None:
    """Raise `ConfigError` naming every problem of `config`, in one line."""
    found = problems(config, device_count, process_count)
    if found:
        raise ConfigError("; ".join(found))


class InputError(ValueError):
    """A file the command names that cannot be used (the entry point exits with status 1)."""


def check_inputs(config) -> None:
    """What `generate` reads, checked before its model is loaded: the fields it needs (`ConfigError`), its video
    and its run folder (`InputError`, `FileNotFoundError`), each said in one line."""
    if _get(config, "trainer") != "generate":
        return
    missing = [f"--config.{k}" for k in ("run", "video", "question") if not config[k]]
    if missing:
        raise ConfigError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required")
    from liteframe_jax.assembly import run_folder
    from liteframe_jax.data import video
    try:
        video.probe(config.video)
    except video.VideoError as e:
        raise InputError(f"--config.video: {e}") from e
    run_folder.read_spec(paths.resolve(config.run))  # a missing folder or one that is not a run: one line each
