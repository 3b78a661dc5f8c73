"""Fitting a preset to the chips it runs on: the fields that decide what a step needs per chip
(`grad_accum_steps`, `remat`, `mesh.fsdp`, `mesh.context`) chosen so the compiled step fits within
`aot.HEADROOM` of HBM, without changing what is trained (the global batch, the model, the optimizer stay the
preset's).

`config.sizing`:
  'table' (default)  the chip kind's row of `TABLE` (found by compiling the preset for that chip, BENCHMARKS.md)
  'auto'             the table's row, then, if the compiled step still does not fit, the ladder below, compiling
                     at each rung until it fits: rematerialisation, the encoder a few clips at a time (LMA),
                     FSDP over every device, on a TPU the towers' attention as the splash kernel,
                     doubling `grad_accum_steps`, then (LMA) the LLM's layers as a loop (`scan_layers`),
                     each row's tokens over twice the chips (`mesh.context`, models/context_parallel.py) with
                     one row a micro-batch per row group, and the weights split over those chips too
                     (`mesh.weights_over_context`)
  'off'              the config's own fields
The run says what it chose and why.
"""

from __future__ import annotations

from typing import Callable

from liteframe_jax.core import hardware
from liteframe_jax.core.log import log

# (trainer, preset) -> chip kind -> what fits: `rows_per_chip` (examples of a micro-batch on each chip: sets
# grad_accum_steps for the run's batch and chips) and any config fields (remat, mesh.*). Each TPU row was
# compiled for that chip kind's smallest host (v5e / v6e: 8 chips, v4 / v5p: 4) and fits within the headroom
# there (BENCHMARKS.md, "TPU compile table"); more chips hold no more per chip. The GPU rows are the steps the
# training benches measured on one GPU (CTD at 32 clips; LMA at one 512-frame row) and, for LMA on an H100, the
# step compiled there.
TABLE: dict[tuple[str, str], dict[str, dict]] = {
    ("ctd", "paper"): {"v4": {"rows_per_chip": 4}, "v5e": {"rows_per_chip": 2}, "v5p": {"rows_per_chip": 16},
                       "v6e": {"rows_per_chip": 4},
                       "h100": {"rows_per_chip": 32}, "h200": {"rows_per_chip": 32}},
    ("lma", "paper"): {"v5p": {"rows_per_chip": 1, "remat": "full", "encoder_clips_per_pass": 8, "mesh.data": 1,
                               "mesh.fsdp": -1},
                       # one row over each pair of chips (models/context_parallel.py): one row a chip does not fit
                       "v6e": {"rows_per_chip": 1, "remat": "full", "encoder_clips_per_pass": 4, "mesh.data": 1,
                               "mesh.fsdp": -1, "mesh.context": 2},
                       "v4": {"rows_per_chip": 1, "remat": "full", "encoder_clips_per_pass": 4, "mesh.data": 1,
                              "mesh.fsdp": -1, "mesh.context": 2},
                       # each row over all 8 chips of a host, which also share the weights; the LLM's layers as a
                       # loop: at 16 GiB a chip no row-per-chip or row-per-pair setting fits
                       "v5e": {"rows_per_chip": 1, "remat": "full", "encoder_clips_per_pass": 8, "mesh.data": 1,
                               "mesh.fsdp": -1, "mesh.context": 8, "mesh.weights_over_context": True,
                               "scan_layers": True},
                       # the LLM's layers as a loop: unrolled they do not fit an H100 (BENCHMARKS.md, TPU compile table)
                       "h100": {"rows_per_chip": 1, "remat": "full", "encoder_clips_per_pass": 8,
                                "scan_layers": True},
                       "h200": {"rows_per_chip": 1, "remat": "full"}},
}


def _set(config, field: str, value) -> None:
    node = config
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value


def _get(config, field: str):
    node = config
    for p in field.split("."):
        node = node[p]
    return node


def accumulation(batch: int, batch_devices: int, rows_per_chip: int) -> int:
    """The fewest micro-batches of at most `rows_per_chip` rows on each of `batch_devices` devices that split
    `batch` evenly."""
    accum = max(1, -(-batch // (batch_devices * rows_per_chip)))
    while batch % (accum * batch_devices) and accum < batch:
        accum += 1
    return accum


def from_table(config, chip: hardware.Chip | None, devices: int = 1) -> list[str]:
    """Apply the chip's row of the table; the lines saying what changed."""
    if chip is None or config.get("sizing", "table") == "off":
        return []
    row = dict(TABLE.get((config.trainer, config.get("preset", "")), {}).get(chip.name, {}))
    said = []
    if "rows_per_chip" in row:
        context = int(row.get("mesh.context", config.mesh.get("context", 1)))
        split = devices // max(int(row.get("mesh.tensor", config.mesh.tensor)), 1) // max(context, 1)
        row["grad_accum_steps"] = accumulation(int(config.batch_size), split, row.pop("rows_per_chip"))
    for field, value in row.items():
        if _get(config, field) != value:
            said.append(f"{field}={value} (was {_get(config, field)})")
            _set(config, field, value)
    if said:
        return [f"{chip.name}: " + ", ".join(said) + f" (what {config.trainer}:{config.preset} needs to fit a "
                f"{chip.name} chip: the table in train/sizing.py; --config.sizing=off keeps the config's)"]
    return []


def ladder(config, devices: int, tpu: bool = False) -> list[tuple[str, object]]:
    """The next changes to try, cheapest in step time first. `tpu`: the chips are TPUs."""
    rungs = []
    if config.get("remat", None) == "none":
        rungs.append(("remat", "full"))
    clips = int(config.data.num_frames) // 8 if config.trainer == "lma" else 0
    if clips > 8 and not config.get("encoder_clips_per_pass", 0) and clips % 8 == 0:
        rungs.append(("encoder_clips_per_pass", 8))  # the encoder's activations, a pass at a time
    split = devices // max(int(config.mesh.tensor), 1) // max(int(config.mesh.get("context", 1)), 1)  # batch devices
    if config.mesh.fsdp != -1 and config.mesh.fsdp < split:
        rungs.append(("mesh.fsdp", -1))
    if tpu and config.kernels.get("tower_attention") != "splash":
        rungs.append(("kernels.tower_attention", "splash"))  # the towers' attention scores never held whole
    accum = int(config.get("grad_accum_steps", 1))
    while int(config.batch_size) % (accum * 2 * split) == 0:
        accum *= 2
        rungs.append(("grad_accum_steps", accum))
    if config.trainer == "lma" and not config.get("scan_layers", False):
        rungs.append(("scan_layers", True))  # one hidden state kept per LLM layer, at the price of no prefetch
    if config.trainer == "lma":  # one row a chip still too much: split each row's tokens over more chips
        context, tensor = int(config.mesh.get("context", 1)), max(int(config.mesh.tensor), 1)
        lengths = [int(b) for b in config.data.get("buckets", ())] or [int(config.data.max_length)]
        while devices % (tensor * context * 2) == 0 and all(n % (context * 2) == 0 for n in lengths):
            context *= 2
            rungs.append(("mesh.context", context))
        if context > 1 and not config.mesh.get("weights_over_context", False):
            rungs.append(("mesh.weights_over_context", True))  # the row's chips share the weights too
    return rungs


def search(config, devices: int, fits: Callable[[object], tuple[bool, str]], tpu: bool = False) -> list[str]:
    """`sizing='auto'`: compile (`fits(config)` -> (fits, what it needs)) and move down the ladder until it fits.
    Raises MemoryError naming the last figure when no rung fits."""
    ok, need = fits(config)
    said = []
    for field, value in ladder(config, devices, tpu):
        if ok:
            break
        if field == "mesh.fsdp":
            config.mesh.data = 1
        _set(config, field, value)
        if field == "mesh.context":  # fewer devices per row group: micro-batches of one row on each
            config.mesh.data, config.mesh.fsdp = 1, -1
            rows_split = devices // max(int(config.mesh.tensor), 1) // value
            config.grad_accum_steps = accumulation(int(config.batch_size), rows_split, 1)
            value = f"{value}, grad_accum_steps={config.grad_accum_steps}"
        said.append(f"{field}={value} (the step needed {need})")
        ok, need = fits(config)
    if not ok:
        raise MemoryError(f"sizing=auto: no rung of the ladder fits; the last step needs {need} "
                          "(a smaller batch_size or more chips)")
    if said:
        log("[sizing] auto: " + "; then ".join(said) + f"; now {need}: fits")
    return said


def mesh_devices(config, devices: list) -> int:
    n = config.mesh.get("num_devices", -1)
    return n if n and n > 0 else len(devices)


def apply(config, devices: list, fits: Callable[[object], tuple[bool, str]] | None = None) -> None:
    """Size `config` for `devices` (their chip kind): the table, then (`sizing='auto'`) the compiled search."""
    chip = hardware.chip_of(devices[0])
    for line in from_table(config, chip, mesh_devices(config, devices)):
        log(f"[sizing] {line}")
    if config.get("sizing", "table") == "auto" and fits is not None:
        search(config, mesh_devices(config, devices), fits, tpu=chip is not None and chip.is_tpu)
