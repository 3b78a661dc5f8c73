"""Grain pipelines: clip specs -> PyAV decode -> uint8 frames -> batches, sharded per process.

Frames leave the pipeline as uint8 (4x less host->device traffic than float32); normalisation for each
model happens on the device. The training iterator is a Grain `DatasetIterator` whose state is saved in
every checkpoint, so a resumed run sees exactly the next batch.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from liteframe_jax.data import bad_data, video, workers
from liteframe_jax.data.clips import ClipSpec


def dropped(reason: str) -> dict:
    """What a clip or row that failed to decode becomes: a marker with its reason (`bad_data.REASONS`), counted
    and removed in the main process after the worker processes' outputs are merged. Grain treats a None
    element as filtered out inside each worker, which shifts its round-robin merge: the batches would then
    depend on the number of workers."""
    return {"_dropped": np.int32(bad_data.code(reason))}


USABLE = np.int32(-1)


@dataclasses.dataclass(frozen=True)
class DecodeClip:
    """ClipSpec -> {'frames': (T, size, size, 3) uint8}, or `dropped(...)` when the file fails to decode."""

    size: int

    def __call__(self, clip: ClipSpec):
        try:
            return {"frames": video.decode_frames(clip.path, clip.frame_indices, self.size)}
        except video.VideoError:
            return dropped(bad_data.MID_RUN)


@dataclasses.dataclass(frozen=True)
class WithTargets:
    """Random access to (clip or cached frames, cached target) pairs: clip i with target i."""

    clips: object  # a ClipSpec sequence or a clip_cache.ClipCache
    targets: object  # a target_cache.TargetCache of the same clips

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i):
        return self.clips[i], self.targets[i]


@dataclasses.dataclass(frozen=True)
class DecodeWithTarget:
    """(ClipSpec or cached frames, target) -> {'frames', 'targets'}, or `dropped(...)` when either is missing."""

    size: int

    def __call__(self, pair):
        clip, target = pair
        example = DecodeClip(self.size)(clip) if isinstance(clip, ClipSpec) else clip
        if not _is_valid(example):
            return example
        if target is None:
            return dropped(bad_data.NO_TARGET)
        return {"frames": example["frames"], "targets": target}


@dataclasses.dataclass(frozen=True)
class _Read:
    """Index -> `source[index]`, decoded by `decode` (unless the source holds decoded frames), with the index
    (`_index`: which clip, for reports) and whether it failed (`_dropped`: a reason code, or -1)."""

    source: object
    decode: object = None

    def __call__(self, index):
        item = self.source[index]
        example = item if self.decode is None else self.decode(item)
        return {"_dropped": USABLE, **example, "_index": np.int64(index)}


@dataclasses.dataclass(frozen=True)
class Usable:
    """Filter of examples leaving the workers (in the main process): whether each is usable, counting the ones
    that are not (`watch`: a `bad_data.MidRun`, or None)."""

    watch: object = None

    def __call__(self, example) -> bool:
        if self.watch is not None:
            return self.watch.observe(int(example["_dropped"]), int(example["_index"]))
        return _is_valid(example)


def _from(ds: grain.MapDataset, start: int) -> grain.MapDataset:
    return ds[start:] if start else ds


def _is_valid(example) -> bool:
    return int(example.get("_dropped", -1)) < 0


def train_dataset(clips: list[ClipSpec], *, size: int, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, num_workers: int = 0, read_threads: int = 2,
                  prefetch: int = 2, cache=None, start: int = 0, targets=None, watch=None) -> grain.IterDataset:
    """Shuffled (a new order every epoch), repeated, this process's share, decoded, batched.

    `batch_size` is the per-process batch; the last incomplete batch of nothing is ever produced since the
    stream repeats forever (`drop_remainder` still guards the final batch of a finite stream). With `cache`
    (a `clip_cache.ClipCache` of exactly `clips`) frames are read from it instead of decoded, in the same
    order, so the batches are the same either way. `start` skips that many of this process's clips without
    reading them (a resume on another number of processes, `train.loop`). With `targets` (a
    `target_cache.TargetCache` of exactly `clips`) each example also carries its clip's cached target. Each
    example carries `_index`, its clip's index in `clips`; `watch` (a `bad_data.MidRun`) counts the clips that
    fail to decode.
    """
    if len(clips) < process_count:
        raise ValueError(f"{len(clips)} clips cannot be shared among {process_count} processes")
    if cache is not None and len(cache) != len(clips):
        raise ValueError(f"clip cache holds {len(cache)} clips, the clip list {len(clips)}")
    source = clips if cache is None else cache
    if targets is not None:
        if len(targets) != len(clips):
            raise ValueError(f"target cache holds {len(targets)} clips, the clip list {len(clips)}")
        source = WithTargets(source, targets)
    # Shuffling the indices, not the clips, gives the same order and lets each example say which clip it is.
    ds = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
    ds = _from(ds[process_index::process_count], start)
    decode = DecodeWithTarget(size) if targets is not None else (DecodeClip(size) if cache is None else None)
    ds = ds.map(_Read(source, decode))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        # Workers decode interleaved slices and Grain merges them back in order, so batching after the merge
        # gives the same batches for any number of workers (a run may resume on a machine with fewer cores).
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=prefetch * batch_size),
                             worker_init_fn=workers.init_worker)
    return it.filter(Usable(watch)).batch(batch_size, drop_remainder=True)


@dataclasses.dataclass(frozen=True)
class _ReadIndexed:
    """(index, is real) -> (example, is real): `source[index]`, decoded by `decode` unless it is a cache's."""

    source: object
    decode: object = None

    def __call__(self, row):
        i, real = row
        item = self.source[i]
        return (item if self.decode is None else self.decode(item)), real


def eval_batches(clips: list[ClipSpec], *, size: int, batch_size: int, process_index: int = 0,
                 process_count: int = 1, read_threads: int = 2, cache=None):
    """Every clip once, in order: yields (this process's batch, mask of real clips).

    The list is padded to whole global batches (so every process runs the same number of steps) and
    process p takes rows [p*batch_size, (p+1)*batch_size) of each global batch. Padding rows and clips that
    fail to decode have mask False. With `cache` (indexable like `clips`: a `clip_cache.ClipCache` or a view
    of one) frames are read from it instead of decoded.
    """
    if cache is not None and len(cache) != len(clips):
        raise ValueError(f"clip cache holds {len(cache)} clips, the clip list {len(clips)}")
    global_batch = batch_size * process_count
    total = -(-len(clips) // global_batch) * global_batch
    rows = [(min(i, len(clips) - 1), i < len(clips)) for i in range(total)]
    mine = [r for i, r in enumerate(rows) if (i % global_batch) // batch_size == process_index]
    read = _ReadIndexed(clips, DecodeClip(size)) if cache is None else _ReadIndexed(cache)
    ds = grain.MapDataset.source(mine).map(read)
    zeros = np.zeros((len(clips[0].frame_indices), size, size, 3), np.uint8)
    frames, mask = [], []
    for example, real in ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads)):
        ok = _is_valid(example)
        frames.append(example["frames"] if ok else zeros)
        mask.append(real and ok)
        if len(frames) == batch_size:
            yield {"frames": np.stack(frames)}, np.asarray(mask)
            frames, mask = [], []


@dataclasses.dataclass(frozen=True)
class QAExample:
    """QARow -> {'frames', 'tokens', 'loss_mask'} (frames sampled uniformly over the whole video)."""

    builder: object  # conversations.PromptBuilder
    size: int
    num_frames: int
    num_video_frames: dict  # path -> frame count (probed once at index time)
    fps: dict  # path -> frames per second

    def frame_plan(self, row) -> tuple[tuple[int, ...], list[float]]:
        from liteframe_jax.data.sampling import group_times, uniform_indices
        idx = uniform_indices(self.num_video_frames[row.video], self.num_frames)
        return idx, group_times(idx, self.num_frames, self.builder.visual_groups, self.fps[row.video])

    def __call__(self, row):
        idx, times = self.frame_plan(row)
        try:
            frames = video.decode_frames(row.video, idx, self.size)
        except video.VideoError:
            return dropped(bad_data.MID_RUN)
        tokens, mask = self.builder.training_example(row.turns, times)
        return {"frames": frames, "tokens": tokens, "loss_mask": mask}


def bucket_length(length: int, buckets) -> int:
    for b in sorted(buckets):
        if length <= b:
            return int(b)
    raise ValueError(f"sequence of {length} tokens is longer than the largest length bucket {max(buckets)}")


class GlobalBatchBucket:
    """(global position, row index) -> the row's example, with the length bucket of the whole global batch it
    belongs to.

    Every process pads its share of a batch to the same length without asking the others: the bucket comes
    from the token lengths of all the global batch's rows, known ahead (`lengths`, one per row) and looked up
    through the same shuffled order. A row that fails to decode mid-run stays in its place as a one-token row
    that carries no loss: dropping it would shift the batches after it on this process only.
    """

    def __init__(self, example: QAExample, rows, lengths, order: grain.MapDataset, *, global_batch: int,
                 buckets: tuple[int, ...], pad_id: int):
        self.example, self.rows, self.lengths, self.order = example, rows, np.asarray(lengths), order
        self.global_batch, self.buckets, self.pad_id = global_batch, tuple(buckets), pad_id
        self._last = (-1, 0)

    def bucket(self, batch: int) -> int:
        known = self._last  # (batch, bucket); read threads share it, so it is replaced whole, never mutated
        if known[0] != batch:
            first = batch * self.global_batch
            longest = max(int(self.lengths[self.order[first + i]]) for i in range(self.global_batch))
            known = self._last = (batch, bucket_length(longest, self.buckets))
        return known[1]

    def __call__(self, position_and_index):
        position, index = position_and_index
        row = self.rows[index]
        example = {"_dropped": USABLE, **self.example(row)}
        if not _is_valid(example):
            s = self.example.size
            example.update(frames=np.zeros((self.example.num_frames, s, s, 3), np.uint8),
                           tokens=np.full((1,), self.pad_id, np.int32), loss_mask=np.zeros((1,), bool))
        elif len(example["tokens"]) != self.lengths[index]:
            raise ValueError(f"row {row.row} ({row.video}) tokenized to {len(example['tokens'])} tokens, "
                             f"{self.lengths[index]} when the run started")
        return {**example, "_index": np.int64(index), "bucket": np.int32(self.bucket(position // self.global_batch))}


@dataclasses.dataclass(frozen=True)
class _Counted:
    """Map of examples leaving the workers (in the main process): counts the rows that failed to decode
    (`watch`: a `bad_data.MidRun`, or None) and keeps every row in its place."""

    watch: object = None

    def __call__(self, example):
        if self.watch is not None:
            self.watch.observe(int(example["_dropped"]), int(example["_index"]))
        return example


@dataclasses.dataclass(frozen=True)
class _WithPosition:
    def __call__(self, position, value):
        return position, value


@dataclasses.dataclass(frozen=True)
class PadToBucket:
    """Batch examples, right-padding token rows to the bucket their global batch uses (`GlobalBatchBucket`)."""

    pad_id: int

    def __call__(self, examples):
        length = int(examples[0]["bucket"])
        n = len(examples)
        tokens = np.full((n, length), self.pad_id, np.int32)
        mask = np.zeros((n, length), bool)
        valid = np.zeros((n, length), bool)
        for i, e in enumerate(examples):
            k = len(e["tokens"])
            if int(e["bucket"]) != length or k > length:
                raise ValueError(f"a batch mixes length buckets ({int(e['bucket'])} and {length}, a row of {k} "
                                 "tokens): its rows do not come from one global batch")
            tokens[i, :k], mask[i, :k], valid[i, :k] = e["tokens"], e["loss_mask"], True
        return {"frames": np.stack([e["frames"] for e in examples]), "tokens": tokens, "loss_mask": mask,
                "valid": valid, "_index": np.stack([e["_index"] for e in examples]),
                "_dropped": np.stack([e["_dropped"] for e in examples])}


def qa_train_dataset(rows, lengths, example: QAExample, *, batch_size: int, buckets, pad_id: int, seed: int,
                     process_index: int = 0, process_count: int = 1, num_workers: int = 0, read_threads: int = 2,
                     prefetch: int = 2, start: int = 0, watch=None) -> grain.IterDataset:
    """As `train_dataset`, for conversation rows (`lengths`: each row's token count): decoded, tokenized, and
    padded to the smallest bucket that holds the longest row of the global batch, the same on every process.
    `_index` names each batch row's row in `rows`; `watch` counts the rows whose video fails to decode."""
    if len(lengths) != len(rows):
        raise ValueError(f"{len(lengths)} token lengths for {len(rows)} rows")
    order = grain.MapDataset.source(range(len(rows))).shuffle(seed=seed).repeat()
    ds = _from(order.map_with_index(_WithPosition())[process_index::process_count], start)
    ds = ds.map(GlobalBatchBucket(example, rows, lengths, order, global_batch=batch_size * process_count,
                                  buckets=tuple(buckets), pad_id=pad_id))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=prefetch * batch_size),
                             worker_init_fn=workers.init_worker)
    return it.map(_Counted(watch)).batch(batch_size, drop_remainder=True, batch_fn=PadToBucket(pad_id))
