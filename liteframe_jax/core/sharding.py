"""The device mesh ('data', 'fsdp', 'tensor', and 'context' where LMA rows are split along their tokens) and
the one rule table from logical axis names to mesh axes.

Parameters carry logical names in their `axes` metadata (see models/layers.py). A rule table, kept in the
config as data, maps each logical name to mesh axes, e.g. `('embed', 'fsdp')`, `('mlp', 'tensor')`. A
dimension whose size the mapped mesh axes do not divide stays replicated; those dimensions are listed once
at start-up so a poor layout is visible.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from liteframe_jax.core.log import log

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")
# Sequence (context) parallelism: with `mesh.context` > 1 the mesh gets this 4th axis, between fsdp and tensor
# (so it lies on the fast links next to tensor), and the LLM's activations are split along their tokens over it
# (models/context_parallel.py). At size 1 the mesh has no such axis: every mesh is as it was without it.
CONTEXT = "context"


def local_mesh() -> Mesh:
    """This process's own devices as a data-parallel mesh (work that each process does on its own)."""
    grid = np.asarray(jax.local_devices()).reshape(-1, 1, 1)
    try:
        from jax.sharding import AxisType
        return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    except (ImportError, TypeError):
        return Mesh(grid, MESH_AXES)


def make_mesh(mesh_cfg, devices=None) -> Mesh:
    """Sizes from config (-1: all remaining devices); `num_devices` > 0 uses only the first N devices.
    `devices`: this process's view of every device by default, or others (a TPU topology's, to compile for it).

    The devices are laid out by JAX's topology-aware `mesh_utils` (on a TPU slice the mesh axes follow the
    chips' physical torus). Over several slices (`slices`, -1: as many as the devices span), `data` is split
    into an outer part across slices (DCN) and an inner part within each (ICI), so only data-parallel gradient
    reductions cross the slower network. A subset of the devices (`num_devices`) is laid out in device order.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = mesh_cfg.get("num_devices", -1)
    subset = bool(n and 0 < n < len(devices))
    if n and n > len(devices):
        raise ValueError(f"mesh.num_devices={n} but only {len(devices)} devices are visible")
    if subset:
        devices = devices[:n]
    context = int(mesh_cfg.get(CONTEXT, 1))
    if context < 1:
        raise ValueError(f"mesh.context={context}: must be 1 (no sequence split) or the number of devices per row")
    axes = MESH_AXES if context == 1 else (*BATCH_AXES, CONTEXT, "tensor")
    sizes = [context if a == CONTEXT else int(mesh_cfg[a]) for a in axes]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(axes, sizes))}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices cannot fill mesh {dict(zip(axes, sizes))}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh {dict(zip(axes, sizes))} needs {math.prod(sizes)} devices, "
                         f"{len(devices)} are in use")
    slices = num_slices(devices, int(mesh_cfg.get("slices", -1)))
    grid = np.asarray(devices).reshape(sizes) if subset and slices == 1 else device_grid(sizes, devices, slices)
    try:  # Auto axes: jax >= 0.7 would otherwise default jax.make_mesh to Explicit
        from jax.sharding import AxisType
        return Mesh(grid, axes, axis_types=(AxisType.Auto,) * len(axes))
    except (ImportError, TypeError):
        return Mesh(grid, axes)


def _granule(devices) -> str:
    """What one slice is: TPU devices carry `slice_index`; elsewhere each process is one."""
    return "slice_index" if hasattr(devices[0], "slice_index") else "process_index"


def num_slices(devices, requested: int = -1) -> int:
    """The number of slices (TPU slices, or processes where devices have no slice) the mesh spans over DCN:
    `requested`, or -1 for as many TPU slices as the devices span (1 off TPU)."""
    found = len({getattr(d, "slice_index", 0) for d in devices})
    if requested in (-1, 0):
        return found
    granules = len({getattr(d, _granule(devices)) for d in devices})
    if requested != granules:
        raise ValueError(f"mesh.slices={requested}, but the devices span {granules} "
                         f"{'slices' if _granule(devices) == 'slice_index' else 'processes'}")
    return requested


def device_grid(sizes: list[int], devices, slices: int) -> np.ndarray:
    """The devices as an array of shape `sizes`, topology-aware; over `slices` > 1 the data axis spans them."""
    if slices <= 1:
        return mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    if sizes[0] % slices:
        raise ValueError(f"mesh.data={sizes[0]} is not a multiple of the {slices} slices: data parallelism is what "
                         "crosses slices, so each slice holds mesh.data / slices of it")
    within = [sizes[0] // slices, *sizes[1:]]
    return mesh_utils.create_hybrid_device_mesh(within, [slices] + [1] * (len(sizes) - 1), devices,
                                                process_is_granule=_granule(devices) == "process_index",
                                                allow_split_physical_axes=True)


def logical_to_spec(axes, shape, rules: dict, mesh: Mesh, name: str = "", notes: list | None = None) -> P:
    spec, used = [], set()
    for dim, logical in zip(shape, axes or (None,) * len(shape)):
        mesh_axes = rules.get(logical) if logical is not None else None
        if mesh_axes is None:
            spec.append(None)
            continue
        mesh_axes = tuple(a for a in ((mesh_axes,) if isinstance(mesh_axes, str) else mesh_axes)
                          if a not in used and mesh.shape.get(a, 1) > 1)
        size = math.prod(mesh.shape[a] for a in mesh_axes)
        if not mesh_axes or dim % size:
            if mesh_axes and notes is not None:
                notes.append(f"{name}: dim {dim} ({logical}) not divisible by {mesh_axes}={size}")
            spec.append(None)
            continue
        used.update(mesh_axes)
        spec.append(mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
    return P(*spec)


def rules_dict(rules) -> dict:
    out = {}
    for logical, mesh_axes in rules:
        if isinstance(mesh_axes, (list, tuple)):
            bad = [a for a in mesh_axes if a not in (*MESH_AXES, CONTEXT)]
        else:
            bad = [mesh_axes] if mesh_axes not in (None, *MESH_AXES, CONTEXT) else []
        if bad:
            raise ValueError(f"sharding rule ({logical!r}, {mesh_axes!r}) names unknown mesh axes {bad}")
        out[logical] = tuple(mesh_axes) if isinstance(mesh_axes, (list, tuple)) else mesh_axes
    return out


def rules_for(config) -> tuple:
    """The config's rule table; with `mesh.weights_over_context`, each rule that splits a dimension over 'fsdp'
    splits it over ('fsdp', 'context'): the chips that share a row's tokens also share the weights, so a row
    split over c chips needs 1/c of the weights' memory on each (what a mesh whose fsdp axis is small needs)."""
    rules = tuple(config.sharding_rules)
    if not config.mesh.get("weights_over_context", False):
        return rules
    def widened(axes):
        named = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        return (*named, CONTEXT) if "fsdp" in named and CONTEXT not in named else axes
    return tuple((logical, widened(axes)) for logical, axes in rules)


def param_shardings(abstract_state: nnx.State, rules, mesh: Mesh) -> dict:
    """Pure-dict tree of NamedShardings for an (abstract) nnx.State whose Params carry `axes` metadata."""
    rules = rules_dict(rules)
    notes: list[str] = []
    flat = {}
    for path, var in nnx.to_flat_state(abstract_state):
        axes = var.get_metadata().get("axes")
        name = "/".join(str(p) for p in path)
        flat[path] = NamedSharding(mesh, logical_to_spec(axes, var.shape, rules, mesh, name, notes))
    if notes:  # a tensor-parallel or FSDP axis that does not divide a dimension saves nothing on it: say so
        kinds: dict[str, list[str]] = {}
        for note in notes:
            name, what = note.split(": ", 1)
            kinds.setdefault(what, []).append(name)
        log(f"sharding: {len(notes)} parameter dimension(s) stay whole on every device because the mesh axes do "
            "not divide them: " + "; ".join(f"{what} in {len(names)} parameter(s), e.g. {names[0]}"
                                            for what, names in kinds.items()))
    tree: dict = {}
    for path, sharding in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = sharding
    return tree


def batch_axes(mesh: Mesh | None) -> tuple[str, ...]:
    """The axes of `mesh` that split the batch (`BATCH_AXES`) and have more than one device."""
    if mesh is None:
        return ()
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names and mesh.shape[a] > 1)


def row_group(mesh: Mesh | None) -> tuple[int, int]:
    """(this process's part, the number of parts) of each global batch's rows, for the data pipeline.

    Each process reads the rows its devices hold. Where a row's chips (its 'context' or 'tensor' devices) lie in
    several processes, those processes hold the same rows and read the same part; one process per part
    otherwise, as `jax.process_index()` / `jax.process_count()`."""
    if mesh is None or jax.process_count() == 1:
        return 0, 1
    held = row_blocks(mesh.devices, mesh.axis_names)
    groups = sorted(set(held.values()))
    return groups.index(held[jax.process_index()]), len(groups)


def row_blocks(grid: np.ndarray, axis_names) -> dict[int, tuple[int, ...]]:
    """process index -> the row blocks of the batch (`batch_sharding`'s parts, in order) its devices hold, for
    a mesh's device `grid`. A layout whose processes hold overlapping but unequal blocks, which no process
    could read alone, is refused."""
    first = [axis_names.index(a) for a in BATCH_AXES if a in axis_names]
    rest = [i for i in range(grid.ndim) if i not in first]
    by_block = np.transpose(grid, first + rest).reshape(math.prod(grid.shape[i] for i in first), -1)
    held: dict[int, set[int]] = {}
    for block, devices in enumerate(by_block):
        for device in devices:
            held.setdefault(device.process_index, set()).add(block)
    groups = {tuple(sorted(b)) for b in held.values()}
    if sum(map(len, groups)) != len({b for g in groups for b in g}) or len({len(g) for g in groups}) > 1:
        raise ValueError(f"mesh {dict(zip(axis_names, grid.shape))}: its processes hold overlapping but unequal "
                         f"sets of the batch's {len(by_block)} row blocks ({sorted(held.items())}), so no process "
                         "can read its rows alone; choose mesh sizes whose row groups (mesh.context x mesh.tensor "
                         "chips) lie within one process or span whole processes")
    return {p: tuple(sorted(b)) for p, b in held.items()}


def context_size(mesh: Mesh | None) -> int:
    """How many devices share each row's tokens (`mesh.context`; 1 without a mesh or without the axis)."""
    return mesh.shape[CONTEXT] if mesh is not None and CONTEXT in mesh.axis_names else 1


def batch_split(mesh: Mesh | None) -> int:
    """How many parts `mesh` splits the batch into (1 without a mesh)."""
    return math.prod(mesh.shape[a] for a in batch_axes(mesh)) if mesh is not None else 1


def over_batch(fn, mesh: Mesh | None, batched: tuple, replicated: tuple, *, what: str):
    """fn(*batched, *replicated), each device running it on its own examples when `mesh` splits the batch.

    For custom kernels (Pallas Triton, Mosaic GPU) inside a sharded `jax.jit`: XLA's partitioner does not know
    what a custom call does, so it would gather a bare kernel's operands onto every device; under `shard_map`
    each device keeps its examples. The leading (batch) dimension of `batched` and of every output is split
    over the batch axes; `replicated` operands are whole on every device. `what` names the caller in errors.
    """
    axes = batch_axes(mesh)
    if not axes:
        return fn(*batched, *replicated)
    split = batch_split(mesh)
    if batched[0].shape[0] % split:
        raise ValueError(f"{what}: a batch of {batched[0].shape[0]} does not split over the {split} devices of "
                         f"mesh axes {axes}")
    return jax.shard_map(fn, mesh=mesh, in_specs=(P(axes),) * len(batched) + (P(),) * len(replicated),
                         out_specs=P(axes), check_vma=False)(*batched, *replicated)


def batch_sharding(mesh: Mesh, ndim: int, over_context: bool = False) -> NamedSharding:
    """Leading (batch) axis over data x fsdp, the rest replicated; `over_context`: the second axis (a row's
    frames) split over 'context' too, where the mesh has that axis, so no device holds every row whole."""
    second = [CONTEXT] if over_context and ndim > 1 and context_size(mesh) > 1 else []
    return NamedSharding(mesh, P(BATCH_AXES, *second, *([None] * (ndim - 1 - len(second)))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def global_batch(local: dict[str, np.ndarray], mesh: Mesh, over_context: tuple[str, ...] = ()) -> dict[str, jax.Array]:
    """Assemble the global batch from every process's local rows. The arrays named in `over_context` are also
    split along their second axis over 'context' (`batch_sharding`): each process holds its rows whole, and
    each device takes its part of them."""
    out = {}
    for k, v in local.items():
        split = k in over_context and context_size(mesh) > 1
        sh = batch_sharding(mesh, v.ndim, over_context=split)
        # the second axis given whole: jax then reads each device's part out of the local array
        shape = (_global_rows(v.shape[0], mesh), *v.shape[1:]) if split else None
        out[k] = jax.make_array_from_process_local_data(sh, v, shape)
    return out


def _global_rows(local_rows: int, mesh: Mesh) -> int:
    """The global batch's rows when this process holds `local_rows` of them (its devices' row blocks)."""
    blocks = batch_split(mesh)
    indices = batch_sharding(mesh, 1).addressable_devices_indices_map((blocks,)).values()
    return local_rows // len({index[0].start for index in indices}) * blocks
