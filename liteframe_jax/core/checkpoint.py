"""Orbax checkpoints with two items, the train state and the Grain iterator, and the resume order.

Resume order (first that applies): the run's own workdir -> `config.resume_from` (another run's workdir:
state and data position) -> `config.init_from` (parameters only, e.g. a CTD student into LMA) -> scratch.
The teacher is never part of the state and never saved. The frozen parts of a model that a run produces
(an LMA run's student and LLM when they do not train) are written once to `WORKDIR/frozen/`, so the run folder
alone holds the whole model.

A checkpoint that cannot be written for lack of space (a full disk, a quota, a file-size limit) ends the run
with `CheckpointWriteError`, which names the step, the reason and the last complete checkpoint: the one that the
same command resumes from, since Orbax's half-written folder is never taken for a checkpoint.

A checkpoint damaged after it was written is refused at restore with `DamagedCheckpointError`, naming the step,
the array where it is known and the `--config.resume_step` of the checkpoint before it; a run goes back to an
earlier step only when told so, moving the later ones aside (`set_aside_after`), never deleting them. TensorStore
notices a truncated or missing file (a byte range past its end, a cut compressed stream) and a damaged index
(OCDBT's b-tree nodes carry a CRC-32C), but not changed bytes inside an array's values: they are stored as raw
zstd blocks without a checksum and read back as other numbers. So each save also writes
`checkpoints/digests-<step>.process_<i>.json`: a CRC-32 of every array piece the process saved (replica 0 of
each shard), checked against what was restored. It costs one more copy of the state to the host and a CRC-32
of it (about 2 GB/s on one core), in the save call.
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
import zlib

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from liteframe_jax.core import paths
from liteframe_jax.core.run_dir import RunDir
from liteframe_jax.core.tree import flatten, unflatten

# The layout of what a run saves (items, their trees, the data positions), recorded in every checkpoints folder:
# a later version that changes it raises this, and this version refuses folders written by a later one.
FORMAT_VERSION = 1
FORMAT_FILE = "liteframe_format.json"


def checkpoint_dir(workdir: str) -> str:
    return RunDir(workdir).checkpoints


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
    return RunDir(workdir).frozen


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


class DamagedCheckpointError(ValueError):
    """A saved checkpoint that cannot be read back as it was written; the message says which and how to go on."""


def _box(index, shape) -> str:
    """A shard's place in its array as text ("0:4,0:128"; "" for a scalar): the key of its digest."""
    return ",".join("%d:%d" % s.indices(n)[:2] for s, n in zip(index, shape))


def _crc(data) -> int:
    return zlib.crc32(np.ascontiguousarray(data).reshape(-1).view(np.uint8))


def _leaves(tree) -> dict[str, object]:
    """{"opt_state/1/0/mu/head/kernel": leaf} of every leaf, into lists and named tuples too (`tree.flatten` keeps
    to dicts), named as Orbax names the arrays it saves."""
    def name(key) -> str:
        return str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))))
    return {"/".join(map(name, path)): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def _digests(state) -> dict[str, dict]:
    """{array path: {"dtype": ..., "crc32": {box: CRC-32}}} of the pieces of `state` that this process saves
    (replica 0 of each shard)."""
    out = {}
    for path, x in _leaves(state).items():
        if isinstance(x, jax.Array):
            pieces = {_box(sh.index, x.shape): _crc(np.asarray(sh.data)) for sh in x.addressable_shards
                      if sh.replica_id == 0}
        elif isinstance(x, (np.ndarray, np.generic)):
            pieces = {_box((slice(None),) * np.ndim(x), np.shape(x)): _crc(x)} if jax.process_index() == 0 else {}
        else:
            continue
        if pieces:
            out[path] = {"dtype": str(x.dtype), "crc32": pieces}
    return out


def _unequal_to_saved(saved: dict[str, dict], restored) -> list[str]:
    """The arrays of `restored` with a piece whose CRC-32 differs from the one saved. A piece is checked where
    this process holds it whole: all of them when the run has the saving run's devices, or holds every array;
    an array restored into another dtype (Orbax casts it) is not."""
    bad = []
    for path, x in _leaves(restored).items():
        if path not in saved or not isinstance(x, jax.Array) or str(x.dtype) != saved[path]["dtype"]:
            continue
        local = {_box(sh.index, x.shape): sh.data for sh in x.addressable_shards}
        for box, crc in saved[path]["crc32"].items():
            if box in local:
                piece = local[box]
            elif x.is_fully_addressable:
                piece = x[tuple(slice(*map(int, b.split(":"))) for b in box.split(",") if b)]
            else:
                continue
            if _crc(np.asarray(piece)) != crc:
                bad.append(path)
                break
    return bad


_TENSORSTORE_READ = re.compile(r"Error (reading|opening|decoding)\b")


def _read_error(error: BaseException) -> BaseException | None:
    """The error of reading damaged files that `error` was raised from, or None for another error (which is then
    not said to be damage). TensorStore's are ValueErrors naming what it read, which Orbax raises again as a bare
    Exception when it reads into device arrays; a cut JSON file (Orbax's metadata, Grain's position) or a missing
    one is said as itself."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (json.JSONDecodeError, FileNotFoundError)) or (
                isinstance(error, ValueError) and _TENSORSTORE_READ.search(str(error))):
            return error
        error = error.__cause__ or error.__context__
    return None


def _damage(error: BaseException) -> str:
    """What a TensorStore / Orbax read error says went wrong: the array it was reading, and the reason."""
    text = str(error).split(" [tensorstore_spec")[0].strip()
    array = re.search(r'Error reading "([^"/]+)/', text)
    files = re.findall(r'local file "([^"]+)": ', text)
    reason = text.rsplit(f'local file "{files[-1]}": ', 1)[1] if files else text.splitlines()[0] if text else ""
    reason = f"{type(error).__name__}: {reason}" if not files else reason
    if files and not files[-1].endswith("/"):  # a file of the index, read for whichever array came first
        return f"file {files[-1]}: {reason[:200]}"
    return (f"array {array.group(1).replace('.', '/')}: " if array else "") + reason[:200]


def _megabytes(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


class Checkpointer:
    def __init__(self, workdir: str, *, keep: int, async_save: bool = True):
        self.directory = checkpoint_dir(workdir)
        self.run = RunDir(workdir)
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
            # the digests first: a step that Orbax finishes always has them (and they are taken before the loop
            # donates `state` to its next step)
            self._write_digests(step, state)
            self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                            data=grain.checkpoint.CheckpointSave(data_iterator)),
                              force=True)

    def _digest_file(self, step: int, process: int | None = None) -> str:
        process = jax.process_index() if process is None else process
        return f"{self.directory}/digests-{step}.process_{process}.json"

    def _write_digests(self, step: int, state) -> None:
        paths.write_text(self._digest_file(step), json.dumps(_digests(state)))
        if jax.process_index() == 0:  # those of checkpoints Orbax has removed (keep_checkpoints), and those of
            # processes this run does not have, left by an attempt at this step that was killed before it finished
            kept = set(self.manager.all_steps()) | {step}
            for name in paths.listdir(self.directory):
                found = re.fullmatch(r"digests-(\d+)\.process_(\d+)\.json", name)
                if found and (int(found.group(1)) not in kept or
                              int(found.group(1)) == step and int(found.group(2)) >= jax.process_count()):
                    paths.remove(f"{self.directory}/{name}")

    def _saved_digests(self, step: int) -> dict[str, dict] | None:
        """Every process's digests of `step`, merged; None for a checkpoint saved without them."""
        names = [n for n in paths.listdir(self.directory) if n.startswith(f"digests-{step}.process_")]
        if not names:
            return None
        merged = {}
        for name in names:
            try:
                digests = json.loads(paths.read_text(f"{self.directory}/{name}"))
            except ValueError as e:  # the digests file is damaged itself
                raise self.damaged(step, f"file {self.directory}/{name}: {e}") from e
            for path, entry in digests.items():
                merged.setdefault(path, {"dtype": entry["dtype"], "crc32": {}})["crc32"].update(entry["crc32"])
        return merged

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def damaged(self, step: int, what: str) -> DamagedCheckpointError:
        earlier = [s for s in self.all_steps() if s < step]
        hint = (f"to resume from the checkpoint before it, add --config.resume_step={earlier[-1]} (nothing is "
                "deleted: a workdir's later checkpoints are moved to checkpoints_set_aside/)" if earlier else
                "there is no earlier checkpoint: restore its files, or start again in a new --workdir")
        return DamagedCheckpointError(f"the checkpoint of step {step} ({self.directory}/{step}) is damaged ({what}); "
                                      f"{hint}")

    def set_aside_after(self, step: int) -> list[int]:
        """Move the checkpoints after `step` to `WORKDIR/checkpoints_set_aside/` (Orbax saves no step twice, and a
        run resumed from `step` saves those steps again); the steps moved."""
        later = [s for s in self.all_steps() if s > step]
        if later and jax.process_index() == 0:
            aside = self.run.checkpoints_set_aside
            paths.makedirs(aside)
            for s in later:
                target = f"{aside}/{s}"
                n = 1
                while paths.exists(target):  # a step set aside before keeps its place
                    target, n = f"{aside}/{s}.{n}", n + 1
                paths.as_epath(f"{self.directory}/{s}").rename(paths.as_epath(target))
                for name in paths.listdir(self.directory):  # its digests go with it
                    if name.startswith(f"digests-{s}.process_"):
                        paths.as_epath(f"{self.directory}/{name}").rename(paths.as_epath(f"{target}/{name}"))
        if later:
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils
                multihost_utils.sync_global_devices("liteframe_set_aside")
            self.manager.reload()
        return later

    def saved_process_counts(self, step: int) -> set[int]:
        """How many processes wrote the data positions of `step` (Grain writes one file per process)."""
        folder = f"{self.directory}/{step}/data"
        names = paths.listdir(folder) if paths.isdir(folder) else []
        return {int(n.rsplit("-of-", 1)[1].split(".")[0]) for n in names if n.startswith("process_") and "-of-" in n}

    def restore(self, step: int, abstract_state, data_iterator) -> tuple[dict, bool]:
        """(state, whether `data_iterator` was moved to the saved position). It is not when another number of
        processes saved the step: Grain's positions are per process; the caller then starts the data stream at
        the step instead (`train.loop`). A checkpoint of another model is refused, naming what differs."""
        try:
            meta = self.manager.item_metadata(step)["state"]
        except Exception as e:
            if _read_error(e) is None:
                raise
            raise self.damaged(step, _damage(_read_error(e))) from e
        meta = getattr(meta, "tree", meta)
        problems = tree_differences(dict(meta).get("params", {}), abstract_state["params"])
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise ValueError(f"checkpoint {self.directory}/{step} does not fit this run's model: {shown}. It was "
                             "written with another configuration: train in a new --workdir, or start from its "
                             "parameters there with --config.init_from")
        positioned = jax.process_count() in self.saved_process_counts(step)
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if positioned:
            items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        try:
            state = self.manager.restore(step, args=ocp.args.Composite(**items))["state"]
        except Exception as e:
            if _read_error(e) is None:
                raise
            raise self.damaged(step, _damage(_read_error(e))) from e
        saved = self._saved_digests(step)
        if saved is None:
            logging.info("checkpoint %s/%d has no digests (saved by an earlier version): values not checked",
                         self.directory, step)
        else:
            bad = _unequal_to_saved(saved, state)
            if bad:
                shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                raise self.damaged(step, f"array {shown}: the values read differ from those saved, by their CRC-32")
        return state, positioned

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
