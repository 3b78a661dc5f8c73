"""Orbax checkpoints with two items, the train state and the Grain iterator, and the resume order.

Resume order (first that applies): the run's own workdir -> `config.resume_from` (another run's workdir:
state and data position) -> `config.init_from` (parameters only, e.g. a CTD student into LMA) -> scratch.
The teacher is never part of the state and never saved. The frozen parts of a model that a run produces
(an LMA run's student and LLM when they do not train) are written once to `WORKDIR/frozen/`, so the run folder
alone holds the whole model.

A checkpoint that cannot be written for lack of space (a full disk, a quota, a file-size limit) ends the run
with `CheckpointWriteError`, which names the step, the reason and the last complete checkpoint: the one that the
same command resumes from, since Orbax's half-written folder is never taken for a checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import resource
import shutil

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from liteframe_jax.core import paths
from liteframe_jax.core.tree import flatten, unflatten

# The layout of what a run saves (items, their trees, the data positions), recorded in every checkpoints folder:
# a later version that changes it raises this, and this version refuses folders written by a later one.
FORMAT_VERSION = 1
FORMAT_FILE = "liteframe_format.json"


def checkpoint_dir(workdir: str) -> str:
    return paths.resolve(workdir) + "/checkpoints"


def check_format(directory: str) -> None:
    """Refuse a checkpoints folder written by a later checkpoint format than this version reads."""
    path = f"{directory}/{FORMAT_FILE}"
    if not paths.isfile(path):
        return  # a new folder, or one written before the format was recorded (version 1)
    version = int(json.loads(paths.read_text(path)).get("format_version", 1))
    if version > FORMAT_VERSION:
        raise ValueError(f"{directory} was written in checkpoint format {version}; this liteframe_jax reads format "
                         f"{FORMAT_VERSION} and older: upgrade liteframe_jax to resume or read it")


def _record_format(directory: str) -> None:
    if jax.process_index() == 0:
        paths.makedirs(directory)
        paths.write_text(f"{directory}/{FORMAT_FILE}", json.dumps({"format_version": FORMAT_VERSION}) + "\n")


def frozen_dir(workdir: str) -> str:
    return paths.resolve(workdir) + "/frozen"


def save_tree(path: str, tree) -> None:
    """A tree of (possibly sharded) arrays to an Orbax folder; every process takes part."""
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(paths.resolve(path), tree)
    checkpointer.wait_until_finished()
    checkpointer.close()


def has_tree(path: str) -> bool:
    return paths.isfile(paths.resolve(path) + "/_METADATA")


def read_tree(path: str) -> dict:
    """A tree written by `save_tree`, as host numpy arrays."""
    checkpointer = ocp.PyTreeCheckpointer()
    meta = checkpointer.metadata(paths.resolve(path))
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    return checkpointer.restore(paths.resolve(path), restore_args=restore_args)


def tree_differences(saved: dict, wanted: dict) -> list[str]:
    """What keeps a saved parameter tree (arrays or their metadata) from restoring into `wanted` (shapes):
    parameters missing from it, of another shape, or extra in it, in `wanted`'s order."""
    have, want = flatten(saved), flatten(wanted)
    problems = []
    for path, leaf in want.items():
        if path not in have:
            problems.append(f"{path} {tuple(leaf.shape)} is not in the checkpoint")
        elif tuple(have[path].shape) != tuple(leaf.shape):
            problems.append(f"{path}: checkpoint {tuple(have[path].shape)}, this run {tuple(leaf.shape)}")
    problems += [f"{path} {tuple(have[path].shape)} is in the checkpoint but not in this run's model"
                 for path in have if path not in want]
    return problems


class CheckpointWriteError(OSError):
    """A checkpoint could not be written for lack of space; the message says which and what is left."""


_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def out_of_space(error: BaseException) -> str | None:
    """Why `error` (or an error it was raised from) says there was no room to write, or None. TensorStore,
    which writes the arrays, raises a ValueError that carries the OS error's code in its text."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            return os.strerror(error.errno)
        code = re.search(r"os_error_code='?(\d+)", str(error))
        if code and int(code.group(1)) in _NO_SPACE:
            return os.strerror(int(code.group(1)))
        error = error.__cause__ or error.__context__
    return None


class _QuietAboutSpace(logging.Filter):
    """Drops the library records of a write that failed for lack of space (Orbax's writing thread logs the
    error with its traceback, asyncio each of the writes' unretrieved failures): the Checkpointer says it once,
    in one line (`CheckpointWriteError`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and out_of_space(error):
            return False
        return not _SPACE_CODE.search(record.getMessage())


_SPACE_CODE = re.compile(r"os_error_code='?(%s)\b" % "|".join(str(c) for c in sorted(_NO_SPACE)))
_QUIET = _QuietAboutSpace()


def _quiet_about_failed_writes() -> None:
    for name in ("absl", "asyncio"):  # the loggers Orbax's threads and asyncio's futures report on
        if _QUIET not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_QUIET)


def _megabytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
        self.directory = checkpoint_dir(workdir)
        check_format(self.directory)
        _quiet_about_failed_writes()
        self._format_recorded = False
        self._writing = None  # the step being saved, until its save is known to have finished
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                               enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data"),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()})

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def _no_room(self, step: int, reason: str) -> CheckpointWriteError:
        try:
            last = max((s for s in self.manager.all_steps() if s != step), default=None)
        except Exception:  # noqa: BLE001 (the folder may be unreadable too: the error must still be said)
            last = None
        left = (f"checkpoint {last} is the last complete one, which the same command resumes from once there is "
                "room (free some space, or lower --config.keep_checkpoints)" if last is not None else
                "there is no earlier checkpoint")
        return CheckpointWriteError(f"the checkpoint of step {step} could not be written to {self.directory}: "
                                    f"{reason}; {left}")

    def _check_room(self, step: int, state) -> None:
        """Refuse a checkpoint that cannot fit before writing any of it: a write that fails midway also ends
        the run (`_space_checked`), but TensorStore then prints a traceback for each write it abandons."""
        if paths.is_remote(self.directory):
            return
        need = sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(state))
        free = shutil.disk_usage(self.directory).free
        if need > free:
            raise self._no_room(step, f"it needs about {_megabytes(need)}, the disk has {_megabytes(free)} free")
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY and need > limit:
            raise self._no_room(step, f"its {_megabytes(need)} may not fit in files of at most {_megabytes(limit)} "
                                      "(this process's file-size limit, ulimit -f)")

    @contextlib.contextmanager
    def _space_checked(self):
        """An error of writing the step being saved for lack of space as a `CheckpointWriteError`; other errors
        as they are."""
        try:
            yield
        except Exception as e:
            reason, failed = out_of_space(e), self._writing
            if reason is None or failed is None:
                raise
            self._writing = None
            raise self._no_room(failed, reason) from e

    def save(self, step: int, state, data_iterator) -> None:
        self.wait()  # the save before (Orbax waits for it anyway), so that its failure is said as its own
        self._check_room(step, state)
        with self._space_checked():
            self._writing = step
            if not self._format_recorded:
                _record_format(self.directory)
                self._format_recorded = True
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            data=grain.checkpoint.CheckpointSave(data_iterator)),
                              force=True)

    def saved_process_counts(self, step: int) -> set[int]:
        """How many processes wrote the data positions of `step` (Grain writes one file per process)."""
        folder = f"{self.directory}/{step}/data"
        names = paths.listdir(folder) if paths.isdir(folder) else []
        return {int(n.rsplit("-of-", 1)[1].split(".")[0]) for n in names if n.startswith("process_") and "-of-" in n}

    def restore(self, step: int, abstract_state, data_iterator) -> tuple[dict, bool]:
        """(state, whether `data_iterator` was moved to the saved position). It is not when another number of
        processes saved the step: Grain's positions are per process; the caller then starts the data stream at
        the step instead (`train.loop`). A checkpoint of another model is refused, naming what differs."""
        meta = self.manager.item_metadata(step)["state"]
        meta = getattr(meta, "tree", meta)
        problems = tree_differences(dict(meta).get("params", {}), abstract_state["params"])
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise ValueError(f"checkpoint {self.directory}/{step} does not fit this run's model: {shown}. It was "
                             "written with another configuration: train in a new --workdir, or start from its "
                             "parameters there with --config.init_from")
        if jax.process_count() not in self.saved_process_counts(step):
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
            return restored["state"], False
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=grain.checkpoint.CheckpointRestore(data_iterator)))
        return restored["state"], True

    def wait(self) -> None:
        with self._space_checked():
            self.manager.wait_until_finished()
            self._writing = None

    def close(self) -> None:
        self.wait()
        self.manager.close()


def has_checkpoint(workdir: str) -> bool:
    d = checkpoint_dir(workdir)
    return paths.isdir(d) and ocp.CheckpointManager(d, options=ocp.CheckpointManagerOptions(
        read_only=True)).latest_step() is not None


def _manager_for_reading(d: str):
    return ocp.CheckpointManager(d, options=ocp.CheckpointManagerOptions(read_only=True), item_names=("state", "data"),
                                 item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                                "data": grain.checkpoint.CheckpointHandler()})


def _resolve_step(manager, d: str, workdir: str, step: int | None) -> int:
    if step is None:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"init_from: no finished checkpoint in {d}")
    elif step not in manager.all_steps():
        raise FileNotFoundError(f"{workdir!r} has no checkpoint at step {step} (it has {sorted(manager.all_steps())})")
    return step


def restore_params(workdir: str, subtree: str = "params", step: int | None = None) -> tuple[dict, int]:
    """The parameters (as host numpy) saved at `step` (default: the latest) of a run's workdir."""
    d = checkpoint_dir(workdir)
    if not paths.isdir(d):
        raise FileNotFoundError(f"init_from: {workdir!r} has no checkpoints folder ({d})")
    check_format(d)
    manager = _manager_for_reading(d)
    step = _resolve_step(manager, d, workdir, step)
    meta = manager.item_metadata(step)["state"]
    meta = getattr(meta, "tree", meta)
    if subtree not in meta:
        raise ValueError(f"init_from: checkpoint {d} step {step} has no {subtree!r} (has {sorted(meta)})")
    item = {subtree: jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), meta[subtree])}
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)))
    logging.info("read %s of %s step %d", subtree, d, step)
    return restored["state"][subtree], step


class LazyArray:
    """A saved array known by its shape and dtype, read when numpy asks for it (`np.asarray(x)`)."""

    def __init__(self, shape, dtype, load):
        self.shape, self.dtype, self._load = tuple(shape), np.dtype(dtype), load

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __array__(self, dtype=None, copy=None):
        value = self._load()
        return value if dtype is None else value.astype(dtype, copy=False)


class LazyTree:
    """An Orbax PyTree folder (a `save_tree` folder, or a checkpoint step's `state` item) read on demand: every
    leaf's shape and dtype at once from the metadata, the values one group at a time (the leaves that share
    their first `group_depth` keys, e.g. one LLM layer), keeping only the last group read. Reading a whole
    model this way in order holds about one layer in memory, not the model."""

    def __init__(self, path: str, subtree: str | None = None, group_depth: int = 2):
        self.path, self.subtree, self.depth = paths.resolve(path), subtree, group_depth
        meta = ocp.PyTreeCheckpointer().metadata(self.path)
        meta = getattr(meta, "item_metadata", meta)
        meta = getattr(meta, "tree", meta)
        if subtree is not None:
            if subtree not in meta:
                raise ValueError(f"{path}: no {subtree!r} in the saved tree (has {sorted(meta)})")
            meta = meta[subtree]
        self.meta = flatten(meta)
        self._group, self._values = None, {}

    def _group_of(self, path: str) -> str:
        return "/".join(path.split("/")[:self.depth])

    def _read_group(self, group: str) -> dict:
        leaves = {p: m for p, m in self.meta.items() if self._group_of(p) == group}
        item = unflatten({p: np.zeros(m.shape, m.dtype) for p, m in leaves.items()})  # shape templates (not filled)
        if self.subtree is not None:
            item = {self.subtree: item}
        restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
        restored = ocp.PyTreeCheckpointer().restore(self.path, args=ocp.args.PyTreeRestore(
            item=item, restore_args=restore_args, partial_restore=True))
        return flatten(restored[self.subtree] if self.subtree is not None else restored)

    def read(self, path: str) -> np.ndarray:
        group = self._group_of(path)
        if group != self._group:
            self._group, self._values = None, {}  # drop the last group before reading the next
            self._values, self._group = self._read_group(group), group
        return self._values[path]

    def leaves(self) -> dict[str, LazyArray]:
        return {p: LazyArray(m.shape, m.dtype, lambda p=p: self.read(p)) for p, m in self.meta.items()}


def lazy_params(workdir: str, step: int | None = None) -> tuple[dict[str, LazyArray], int]:
    """`restore_params` that reads nothing yet: {path: LazyArray} of the parameters saved at `step` (default: the
    latest), each read when used, one group at a time."""
    d = checkpoint_dir(workdir)
    if not paths.isdir(d):
        raise FileNotFoundError(f"{workdir!r} has no checkpoints folder ({d})")
    check_format(d)
    step = _resolve_step(_manager_for_reading(d), d, workdir, step)
    return LazyTree(f"{d}/{step}/state", subtree="params").leaves(), step
