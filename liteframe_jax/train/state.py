"""The train state's layout, shapes first: which parameters train, the shardings of the trained and frozen
parts and of the optimizer state, the abstract state that checkpoints restore into, and the model at init.

Nothing here touches data or the loop: the benches build the same layout to time the same step.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from liteframe_jax.core import sharding
from liteframe_jax.core.tree import flatten, pure_dict, unflatten
from liteframe_jax.train import optim


def split(tree: dict, trainable: set[str]) -> tuple[dict, dict]:
    """(the trained leaves, the rest) of a parameter tree."""
    flat = flatten(tree)
    return (unflatten({k: v for k, v in flat.items() if k in trainable}),
            unflatten({k: v for k, v in flat.items() if k not in trainable}))


def merge(a: dict, b: dict) -> dict:
    return unflatten({**flatten(a), **flatten(b)})


def place(tree: dict, overrides: dict[str, np.ndarray], shardings: dict) -> dict:
    """Replace leaves of a device tree by host arrays (placed with the leaf's sharding)."""
    flat, flat_sh = flatten(tree), flatten(shardings)
    for path, value in overrides.items():
        if path in flat:
            if tuple(value.shape) != tuple(flat[path].shape):
                raise ValueError(f"pretrained parameter {path!r} has shape {value.shape}, the model's is "
                                 f"{flat[path].shape}")
            flat[path] = jax.device_put(np.asarray(value, flat[path].dtype), flat_sh[path])
    return unflatten(flat)


@dataclasses.dataclass
class StateLayout:
    graphdef: Any
    paths: dict[str, tuple]  # every model parameter's path and shape
    trainable: set[str]
    full_sh: dict  # shardings of the whole model's parameters
    param_sh: dict  # ... of the trained ones
    frozen_model_sh: dict  # ... of the frozen ones
    tx: optax.GradientTransformation
    schedule: Any
    state_sh: dict
    abstract: dict  # the train state as ShapeDtypeStructs with shardings
    init_full: Any  # rng -> the whole model's parameters at random init

    frozen_dtypes: dict = dataclasses.field(default_factory=dict)  # frozen path -> the dtype it is kept in

    def frozen_as_kept(self, frozen_model: dict) -> dict:
        """The frozen parameters in the dtypes the task keeps them in (`Task.frozen_dtype`)."""
        flat = flatten(frozen_model)
        for path, dtype in self.frozen_dtypes.items():
            if path in flat:
                v = flat[path]
                flat[path] = (jax.ShapeDtypeStruct(v.shape, dtype, sharding=v.sharding)
                              if isinstance(v, jax.ShapeDtypeStruct) else v.astype(dtype))
        return unflatten(flat)

    def fresh_state(self, params: dict) -> dict:
        return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": self.tx.init(params),
                "nonfinite_streak": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)}

    @property
    def num_trained(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.abstract["params"]))

    @property
    def num_params(self) -> int:
        return sum(int(np.prod(s)) for s in self.paths.values())

    def random_model(self, key) -> dict:
        """The whole model's parameters at random init, on the mesh."""
        return jax.jit(self.init_full, out_shardings=self.full_sh)(key)


def layout(config, task, key) -> StateLayout:
    mesh = task.mesh
    graphdef, abstract_model_state = nnx.split(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
    full_sh = sharding.param_shardings(abstract_model_state, sharding.rules_for(config), mesh)
    paths = {k: tuple(v.shape) for k, v in flatten(pure_dict(abstract_model_state)).items()}
    patterns = task.trainable_patterns()
    trainable = {p for p in paths if any(re.search(pat, p) for pat in patterns)}
    if not trainable:
        raise ValueError(f"no parameter matches the trainable patterns {patterns}; paths look like "
                         f"{sorted(paths)[:5]}")
    param_sh, frozen_model_sh = split(full_sh, trainable)
    tx, schedule = optim.make_optimizer(config.optimizer, int(config.total_steps))
    replicated = sharding.replicated(mesh)

    def init_full(rng):
        return pure_dict(nnx.state(task.build_model(nnx.Rngs(rng))))

    out = StateLayout(graphdef, paths, trainable, full_sh, param_sh, frozen_model_sh, tx, schedule, {}, {}, init_full,
                      {p: d for p in set(paths) - trainable if (d := task.frozen_dtype(p)) is not None})
    abstract = jax.eval_shape(lambda k: out.fresh_state(split(init_full(k), trainable)[0]), key)
    opt_sh = optax.tree_map_params(tx, lambda _, s: s, abstract["opt_state"], param_sh,
                                   transform_non_params=lambda _: replicated,
                                   is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    out.state_sh = {"step": replicated, "params": param_sh, "opt_state": opt_sh,
                    "nonfinite_streak": replicated, "skipped": replicated}
    out.abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
                                out.state_sh)
    return out
