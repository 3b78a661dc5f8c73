"""The `Task` contract: what a trainer adds to the one train loop (train/loop.py).

A task says what is trained (its model and which of its parameters), what is frozen (e.g. the teacher), what
a batch is, how the loss is computed and how held-out data is scored; it builds its model from a spec
(assembly/specs.py) and takes its data as paths (data/sources.py). The loop does the rest, the same way for
every task.
"""

from __future__ import annotations

import abc
from typing import Any, Iterator

import jax
import numpy as np
from flax import nnx

from liteframe_jax.core import sharding
from liteframe_jax.core.log import log
from liteframe_jax.core.tree import flatten, unflatten


class Task(abc.ABC):
    """What a trainer adds to the skeleton: its model, frozen parts, data, loss and evaluation."""

    name: str = "task"
    spec = None  # the spec of the model the run produces (assembly/specs.py), written to WORKDIR/spec.json
    data_watch = None  # a bad_data.MidRun counting the training examples that fail to decode mid-run
    local_batch = 0  # this process's rows of each global batch (core/sharding.py `row_group`)

    def __init__(self, config, mesh):
        self.config, self.mesh = config, mesh

    @abc.abstractmethod
    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        """The trainable model (every nnx.Param in it is trained)."""

    def frozen(self) -> tuple[Any, Any]:
        """(arrays on the mesh, their shardings) of the frozen parts; never saved, never optimised."""
        return None, None

    @abc.abstractmethod
    def batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Global shapes and dtypes of one training batch."""

    def over_context(self) -> tuple[str, ...]:
        """The batch's arrays split along their second axis over the mesh's 'context' axis as well as their rows
        over the batch axes (core/sharding.py `batch_sharding`); none by default."""
        return ()

    @abc.abstractmethod
    def train_dataset(self, start: int = 0):
        """This process's Grain IterDataset of local batches (dicts of numpy arrays), from its `start`-th
        example on."""

    def prepare(self, frozen, batch, rng):
        """Work outside the gradient (e.g. the teacher's targets); runs inside the jitted step."""
        return None

    @abc.abstractmethod
    def loss(self, model: nnx.Module, batch, prepared, rng) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(scalar float32 loss, extra metrics) for one batch."""

    def eval_batches(self) -> Iterator[tuple[dict, np.ndarray]]:
        """(local batch, mask of real rows) over the held-out set; empty when there is none."""
        return iter(())

    def eval_sums(self, model: nnx.Module, frozen, batch, mask) -> dict[str, jax.Array]:
        """Per-batch sums over masked rows; `count` must be among them."""
        raise NotImplementedError

    def evaluate(self, graphdef, params, frozen) -> dict[str, float]:
        """Held-out metrics for the whole model's `params`: by default, `eval_sums` averaged over
        `eval_batches`. Tasks that generate text override this."""
        if not hasattr(self, "_eval_step"):
            self._eval_step = jax.jit(lambda p, f, b, m: self.eval_sums(nnx.merge(graphdef, p), f, b, m))
        totals: dict[str, float] = {}
        for local, mask in self.eval_batches():
            batch = sharding.global_batch({**local, "mask": mask}, self.mesh, self.over_context())
            mask = batch.pop("mask")
            for k, v in jax.device_get(self._eval_step(params, frozen, batch, mask)).items():
                totals[k] = totals.get(k, 0.0) + float(v)
        count = totals.pop("count", 0.0)
        return {k: v / count for k, v in totals.items()} if count else {}

    def trainable_patterns(self) -> list[str]:
        """Regexes over parameter paths ('llm/layer_0/attn/q/dense/kernel'); matching ones are trained, the
        rest of the model is frozen: kept out of the optimizer state and of checkpoints, rebuilt at start."""
        return [".*"]

    def frozen_dtype(self, path: str):
        """The dtype the frozen parameter at `path` is kept in on the devices (None: as initialised). A task
        names a narrower one only where every use casts the parameter to it first, so the step computes the
        same numbers from less memory."""
        return None

    def pretrained_params(self, paths: dict[str, tuple]) -> dict[str, np.ndarray]:
        """{path: array} from pretrained sources (an LLM folder, a CTD run) for the model's parameters
        `paths` ({path: shape}); applied at every start to frozen parts and at a fresh start to trained ones."""
        return {}

    def init_from_params(self, source: dict, target: dict) -> dict:
        """Map a checkpoint's params onto this model's (for `init_from`); default: same paths and shapes."""
        return match_params(source, target)

    def summary(self, result: dict) -> list[str]:
        return []

    def describe_examples(self, indices) -> list[dict]:
        """What the examples at `indices` (the `_index` of a batch's rows) are, for a report: e.g. a clip's
        video and frames."""
        return [{"index": int(i)} for i in indices]


def _listed(paths: list[str], limit: int = 8) -> str:
    return ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def match_params(source: dict, target: dict) -> dict:
    """Take every source leaf whose path and shape match the target; say what was taken, what starts fresh
    (with why) and what of the checkpoint was left unused."""
    src, dst = flatten(source), flatten(target)
    out, taken, fresh = {}, [], []
    for path, leaf in dst.items():
        if path in src and tuple(np.shape(src[path])) == tuple(leaf.shape):
            out[path] = src[path]
            taken.append(path)
        else:
            out[path] = leaf
            fresh.append(path if path not in src else
                         f"{path} (checkpoint {tuple(np.shape(src[path]))}, this model {tuple(leaf.shape)})")
    if not taken:
        raise ValueError("init_from: no parameter of the checkpoint matches this model by name and shape")
    unused = [p for p in src if p not in dst]
    log(f"init_from: {len(taken)} of {len(dst)} parameters taken from the checkpoint")
    if fresh:
        log(f"init_from: {len(fresh)} initialised fresh: {_listed(fresh)}")
    if unused:
        log(f"init_from: {len(unused)} checkpoint parameters unused: {_listed(unused)}")
    return unflatten(out)
