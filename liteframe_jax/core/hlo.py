"""The collectives of a compiled program, read from its optimized HLO text: kind, how many run per step (a
collective inside a loop counts once per trip), the bytes of the whole buffer each moves, and whether its device
groups cross slices (DCN) or stay within one (ICI).

Per-device traffic follows the ring algorithms' cost: an all-gather, reduce-scatter or all-to-all over n devices
moves (n - 1) / n of the whole buffer through each device, an all-reduce twice that, a collective permute the
buffer once.
"""

from __future__ import annotations

import collections
import re

import numpy as np

KINDS = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute", "ragged-all-to-all")
_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "s32": 4, "u32": 4, "s64": 8,
          "u64": 8, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3b11fnuz": 1, "bf16": 2, "f16": 2, "f32": 4, "f64": 8,
          "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(" + "|".join(sorted(_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_OP = re.compile(r"=\s.*?\s(" + "|".join(sorted(KINDS, key=len, reverse=True)) + r")(-start)?\(")
_HEADER = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLS = re.compile(r"\b(body|condition|calls|to_apply|called_computations|branch_computations|true_computation|"
                    r"false_computation)="
                    r"(\{[^}]*\}|%?[\w.\-]+)")
_MEGASCALE = re.compile(r'_xla_megascale_transfer_type="(\w+)"')
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"')


def _bytes(text: str) -> float:
    """The bytes of every array shape written in `text` (a tuple's elements added up)."""
    return float(sum(_BYTES[dt] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
                     for dt, dims in _SHAPE.findall(text)))


def _groups(line: str, num_devices: int) -> list[list[int]]:
    m = re.search(r"source_target_pairs=\{(.*?)\}\}", line)
    if m:
        return [[int(x) for x in pair.split(",")] for pair in re.findall(r"\{?(\d+,\d+)", m.group(1) + "}")]
    m = re.search(r"replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?", line)
    if m:
        shape = [int(x) for x in m.group(1).split(",")]
        ids = np.arange(int(np.prod([int(x) for x in m.group(2).split(",")])))
        ids = ids.reshape([int(x) for x in m.group(2).split(",")])
        if m.group(3):
            ids = ids.transpose([int(x) for x in m.group(3).split(",")])
        return ids.reshape(shape).tolist()
    m = re.search(r"replica_groups=\{(.*?)\}(?:,|$)", line)
    if m and m.group(1).strip():
        return [[int(x) for x in g.split(",") if x] for g in re.findall(r"\{([\d,]*)\}", m.group(1) + "}")]
    return [list(range(num_devices))]


def _trip_multipliers(lines: list[str]) -> dict[str, int]:
    """How many times each computation runs per execution of the entry: the product of the known trip counts
    of the while loops around it."""
    children: dict[str, list[tuple[str, int]]] = collections.defaultdict(list)
    entry, current = None, None
    for line in lines:
        header = _HEADER.match(line)
        if header and "=" not in line.split("{")[0]:
            current = header.group(1)
            if line.lstrip().startswith("ENTRY"):
                entry = current
            continue
        if current is None:
            continue
        trips = _TRIPS.search(line)
        for role, target in _CALLS.findall(line):
            for name in re.findall(r"%?([\w.\-]+)", target.strip("{}")):
                factor = int(trips.group(1)) if role == "body" and trips else 1
                children[current].append((name, factor))
    times: dict[str, int] = collections.defaultdict(int)

    def visit(name: str, n: int, depth: int = 0) -> None:
        if depth > 64:
            return
        times[name] += n
        for child, factor in children.get(name, ()):
            visit(child, n * factor, depth + 1)

    if entry:
        visit(entry, 1)
    return times


def in_hlo(text: str, slice_of_device: list[int], slices: int = 1) -> list[dict]:
    """Every collective of an optimized HLO module: kind, runs per execution, whole-buffer bytes, group size,
    and whether it crosses slices: a group spanning several slices (`slice_of_device[i]`: the slice of the
    i-th device of the program's device assignment), or, in a multi-slice TPU program (one slice's program,
    `slices` of them), a transfer handed to the runtime's DCN collectives."""
    lines = text.splitlines()
    times = _trip_multipliers(lines)
    found, current = [], None
    for line in lines:
        header = _HEADER.match(line)
        if header and "=" not in line.split("{")[0]:
            current = header.group(1)
            continue
        dcn = _MEGASCALE.search(line)
        if dcn and re.search(r"\ssend\(", line):  # a multi-slice program's cross-slice collective, one per send
            kind = dcn.group(1).lower().replace("_", "-")
            found.append({"kind": kind, "runs": max(times.get(current, 1), 1), "dcn": True,
                          "bytes": _bytes(line.split(" send(")[0]) * (slices if kind == "reduce-scatter" else 1),
                          "group": slices})
            continue
        m = _OP.search(line)
        if not m:
            continue
        groups = _groups(line, len(slice_of_device))
        head = re.split(r",\s*(?:channel_id|replica_groups|source_target_pairs|dimensions)=", line, maxsplit=1)[0]
        result, operands = head[:m.end()], head[m.end():]
        out, into = _bytes(result), _bytes(operands)
        if m.group(2) and m.group(1) in ("all-gather", "collective-permute") and out > into:
            out -= into  # an async start's result holds its operands beside the output
        if m.group(1) == "reduce-scatter" and not into:  # operands written without their types
            out *= max((len(g) for g in groups), default=1)
        dcn = any(len({slice_of_device[i] for i in g if i < len(slice_of_device)}) > 1 for g in groups)
        found.append({"kind": m.group(1), "runs": max(times.get(current, 1), 1), "bytes": max(out, into),
                      "group": max((len(g) for g in groups), default=1), "dcn": dcn})
    return found


def traffic(found: list[dict]) -> dict[str, float]:
    """Bytes through each device per execution, over ICI and over DCN."""
    out = {"ici": 0.0, "dcn": 0.0}
    for c in found:
        n = c["group"]
        if n <= 1:
            continue
        share = {"all-reduce": 2 * (n - 1) / n, "collective-permute": 1.0}.get(c["kind"], (n - 1) / n)
        out["dcn" if c["dcn"] else "ici"] += share * c["bytes"] * c["runs"]
    return out


def summary(found: list[dict]) -> dict[str, dict]:
    """kind -> {count: runs per execution, bytes: whole-buffer bytes over those runs, dcn_count}."""
    out: dict[str, dict] = {}
    for c in found:
        s = out.setdefault(c["kind"], {"count": 0, "bytes": 0.0, "dcn_count": 0})
        s["count"] += c["runs"]
        s["bytes"] += c["bytes"] * c["runs"]
        s["dcn_count"] += c["runs"] if c["dcn"] else 0
    return out
