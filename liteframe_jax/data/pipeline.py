"""Grain pipelines: clip specs -> PyAV decode -> uint8 frames -> batches, sharded per process.

Frames leave the pipeline as uint8 (4x less host->device traffic than float32); normalisation for each
model happens on the device. The training iterator is a Grain `DatasetIterator` whose state is saved in
every checkpoint, so a resumed run sees exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import logging

import grain
import numpy as np

from liteframe_jax.data import video
from liteframe_jax.data.clips import ClipSpec

# A clip or row that failed to decode travels as this marker and is removed after the worker processes'
# outputs are merged. Grain treats a None element as filtered out inside each worker, which shifts its
# round-robin merge: the batches would then depend on the number of workers.
DROPPED = {"dropped": np.zeros((), bool)}


@dataclasses.dataclass(frozen=True)
class DecodeClip:
    """ClipSpec -> {'frames': (T, size, size, 3) uint8}, or `DROPPED` when the file fails to decode."""

    size: int

    def __call__(self, clip: ClipSpec):
        try:
            return {"frames": video.decode_frames(clip.path, clip.frame_indices, self.size)}
        except video.VideoError as e:
            logging.warning("dropping clip: %s", e)
            return DROPPED


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
    """(ClipSpec or cached frames, target) -> {'frames', 'targets'}, or `DROPPED` when either is missing."""

    size: int

    def __call__(self, pair):
        clip, target = pair
        example = DecodeClip(self.size)(clip) if isinstance(clip, ClipSpec) else clip
        if target is None or not _is_valid(example):
            return DROPPED
        return {"frames": example["frames"], "targets": target}


def _from(ds: grain.MapDataset, start: int) -> grain.MapDataset:
    return ds[start:] if start else ds


def _is_valid(example) -> bool:
    return "dropped" not in example


def train_dataset(clips: list[ClipSpec], *, size: int, batch_size: int, seed: int, process_index: int = 0,
                  process_count: int = 1, num_workers: int = 0, read_threads: int = 2,
                  prefetch: int = 2, cache=None, start: int = 0, targets=None) -> grain.IterDataset:
    """Shuffled (a new order every epoch), repeated, this process's share, decoded, batched.

    `batch_size` is the per-process batch; the last incomplete batch of nothing is ever produced since the
    stream repeats forever (`drop_remainder` still guards the final batch of a finite stream). With `cache`
    (a `clip_cache.ClipCache` of exactly `clips`) frames are read from it instead of decoded, in the same
    order, so the batches are the same either way. `start` skips that many of this process's clips without
    reading them (a resume on another number of processes, `train.loop`). With `targets` (a
    `target_cache.TargetCache` of exactly `clips`) each example also carries its clip's cached target.
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
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
    ds = _from(ds[process_index::process_count], start)
    if targets is not None:
        ds = ds.map(DecodeWithTarget(size))
    elif cache is None:
        ds = ds.map(DecodeClip(size))
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        # Workers decode interleaved slices and Grain merges them back in order, so batching after the merge
        # gives the same batches for any number of workers (a run may resume on a machine with fewer cores).
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=prefetch * batch_size))
    return it.filter(_is_valid).batch(batch_size, drop_remainder=True)


def eval_batches(clips: list[ClipSpec], *, size: int, batch_size: int, process_index: int = 0,
                 process_count: int = 1, read_threads: int = 2):
    """Every clip once, in order: yields (this process's batch, mask of real clips).

    The list is padded to whole global batches (so every process runs the same number of steps) and
    process p takes rows [p*batch_size, (p+1)*batch_size) of each global batch. Padding rows and clips that
    fail to decode have mask False.
    """
    global_batch = batch_size * process_count
    total = -(-len(clips) // global_batch) * global_batch
    rows = [(clips[min(i, len(clips) - 1)], i < len(clips)) for i in range(total)]
    mine = [r for i, r in enumerate(rows) if (i % global_batch) // batch_size == process_index]
    decode = DecodeClip(size)
    ds = grain.MapDataset.source(mine).map(lambda row: (decode(row[0]), row[1]))
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
        from liteframe_jax.data.sampling import uniform_indices
        idx = uniform_indices(self.num_video_frames[row.video], self.num_frames)
        per_group = self.num_frames // self.builder.visual_groups
        fps = self.fps[row.video] or 1.0
        return idx, [idx[g * per_group] / fps for g in range(self.builder.visual_groups)]

    def __call__(self, row):
        idx, times = self.frame_plan(row)
        try:
            frames = video.decode_frames(row.video, idx, self.size)
        except video.VideoError as e:
            logging.warning("dropping row %d: %s", row.row, e)
            return DROPPED
        tokens, mask = self.builder.training_example(row.turns, times)
        return {"frames": frames, "tokens": tokens, "loss_mask": mask}


def bucket_length(length: int, buckets) -> int:
    for b in sorted(buckets):
        if length <= b:
            return int(b)
    raise ValueError(f"sequence of {length} tokens is longer than the largest length bucket {max(buckets)}")


@dataclasses.dataclass(frozen=True)
class PadToBucket:
    """Batch examples, right-padding token rows to the smallest length bucket that holds the longest."""

    buckets: tuple[int, ...]
    pad_id: int

    def __call__(self, examples):
        length = bucket_length(max(len(e["tokens"]) for e in examples), self.buckets)
        n = len(examples)
        tokens = np.full((n, length), self.pad_id, np.int32)
        mask = np.zeros((n, length), bool)
        valid = np.zeros((n, length), bool)
        for i, e in enumerate(examples):
            k = len(e["tokens"])
            tokens[i, :k], mask[i, :k], valid[i, :k] = e["tokens"], e["loss_mask"], True
        return {"frames": np.stack([e["frames"] for e in examples]), "tokens": tokens, "loss_mask": mask,
                "valid": valid}


def qa_train_dataset(rows, example: QAExample, *, batch_size: int, buckets, pad_id: int, seed: int,
                     process_index: int = 0, process_count: int = 1, num_workers: int = 0, read_threads: int = 2,
                     prefetch: int = 2, start: int = 0) -> grain.IterDataset:
    """As `train_dataset`, for conversation rows: decoded, tokenized, padded to the smallest fitting bucket."""
    ds = _from(grain.MapDataset.source(rows).shuffle(seed=seed).repeat()[process_index::process_count], start)
    ds = ds.map(example)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch))
    if num_workers > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                         per_worker_buffer_size=prefetch * batch_size))
    return it.filter(_is_valid).batch(batch_size, drop_remainder=True, batch_fn=PadToBucket(tuple(buckets), pad_id))
