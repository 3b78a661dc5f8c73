"""What the accelerators people train on are, as published: memory, peak bfloat16 compute and the bandwidths a
roofline estimate needs, and the devices of a Cloud TPU topology that this host can compile for without a TPU.

Figures are per chip, from the vendors' specification pages (Cloud TPU system architecture pages; NVIDIA's
H100 / H200 SXM data sheets, dense bfloat16): interconnect bandwidth is the chip's bidirectional ICI (NVLink
on a GPU host), DCN the data-centre network share per chip between slices (InfiniBand per GPU).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re

GB = 1e9
GIB = 2 ** 30


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str
    device_kinds: tuple[str, ...]  # how jax names the device (`device.device_kind`), lower case
    hbm_bytes: float
    bf16_flops: float  # peak FLOP/s
    hbm_bytes_per_s: float
    ici_bytes_per_s: float
    dcn_bytes_per_s: float
    megacore: bool = False  # two TensorCores seen as one device (v4, v5p)
    cores_per_chip: int = 1  # in Cloud TPU accelerator type names (v5p-8 = 8 cores = 4 chips)

    @property
    def hbm_gib(self) -> float:
        return self.hbm_bytes / GIB

    @property
    def is_tpu(self) -> bool:
        return self.name.startswith("v")


CHIPS = {c.name: c for c in (
    Chip("v4", ("tpu v4",), 32 * GIB, 275e12, 1200 * GB, 300 * GB, 50 / 8 * GB, megacore=True, cores_per_chip=2),
    Chip("v5e", ("tpu v5 lite", "tpu v5e"), 16 * GIB, 197e12, 819 * GB, 400 * GB, 25 / 8 * GB),
    Chip("v5p", ("tpu v5", "tpu v5p"), 95 * GIB, 459e12, 2765 * GB, 1200 * GB, 50 / 8 * GB, megacore=True,
         cores_per_chip=2),
    Chip("v6e", ("tpu v6 lite", "tpu v6e"), 32 * GIB, 918e12, 1638 * GB, 800 * GB, 100 / 8 * GB),
    Chip("h100", ("nvidia h100 80gb hbm3", "nvidia h100"), 80 * GB, 989e12, 3350 * GB, 900 * GB, 400 / 8 * GB),
    Chip("h200", ("nvidia h200",), 141 * GB, 989e12, 4800 * GB, 900 * GB, 400 / 8 * GB),
)}


def chip_of(device) -> Chip | None:
    """The chip a jax device is (None for a CPU or an accelerator not in the table)."""
    kind = str(getattr(device, "device_kind", "")).lower()
    for chip in CHIPS.values():
        if kind in chip.device_kinds:
            return chip
    return None


# Cloud TPU accelerator types -> the topology of their chips: a v5e-8 is 8 chips in a 2x4 grid; a v5p-8 is 8
# TensorCores, 4 chips (2x2x1)
_SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
_SHAPES_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8", 256: "4x8x8",
              512: "8x8x8", 1024: "8x8x16", 2048: "8x16x16"}


def topology_name(name: str) -> tuple[Chip, str]:
    """(chip, 'v5p:2x2x1') from a topology ('v5p:2x2x1') or a Cloud TPU accelerator type ('v5p-8')."""
    m = re.fullmatch(r"(v\d+[a-z]?)(?::(\d+(?:x\d+)+)|-(\d+))", name.strip().lower())
    if not m or m.group(1) not in CHIPS:
        tpus = ", ".join(n for n, c in CHIPS.items() if c.is_tpu)
        raise ValueError(f"topology {name!r}: give CHIP:AxB[xC] (v5e:2x4, v5p:2x2x2) or an accelerator type "
                         f"(v5e-8, v5p-16); chips: {tpus}")
    chip = CHIPS[m.group(1)]
    if m.group(2):
        return chip, f"{chip.name}:{m.group(2)}"
    cores = int(m.group(3))
    chips, shapes = cores // chip.cores_per_chip, _SHAPES_3D if chip.megacore else _SHAPES_2D
    if cores % chip.cores_per_chip or chips not in shapes:
        sizes = sorted(k * chip.cores_per_chip for k in shapes)
        raise ValueError(f"accelerator type {name!r}: {chip.name} comes in {sizes}")
    return chip, f"{chip.name}:{shapes[chips]}"


def topology_devices(name: str, num_slices: int = 1) -> tuple[Chip, list]:
    """(chip, devices) of a Cloud TPU topology, for compiling on a host without one (needs libtpu:
    requirements-tpu.txt). Over `num_slices` > 1 the devices carry their `slice_index`."""
    chip, topology = topology_name(name)
    if importlib.util.find_spec("libtpu") is None:
        raise ValueError(f"compiling for TPU topology {topology} needs libtpu: pip install -r requirements-tpu.txt")
    # libtpu takes a lock file so that one process owns the TPU; a compile-only client owns none, and several
    # (test workers, a sweep) may run at once
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies
        options = dict(chip_config_name="megacore") if chip.megacore else {}
        if num_slices > 1:
            options["num_slices"] = num_slices
        dims = [int(x) for x in topology.split(":")[1].split("x")]
        if math.prod(dims) < 4:  # fewer chips than a host's 2x2 (a v6e-1): libtpu needs the host's bounds said
            options["chips_per_host_bounds"] = tuple(dims + [1] * (3 - len(dims)))
        desc = topologies.get_topology_desc(topology_name=topology, platform="tpu", **options)
    except Exception as e:  # libtpu missing, or a topology it does not know
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot describe TPU topology {topology}: {text}") from None
    return chip, list(desc.devices)
