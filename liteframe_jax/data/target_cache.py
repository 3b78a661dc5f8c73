"""The teacher-target cache: CTD's compressed teacher tokens, computed once per clip and read back in training.

A cache folder holds `manifest.json` and ArrayRecord shards `targets-{k:05d}.array_record`. Shard k holds
the records of clips [k * shard_size, (k + 1) * shard_size) of the clip list, in order, so record i is clip
i's: a 4-byte header length, a JSON header (`clip`, `path`, `frames`: the exact clip it belongs to, and
`valid`), then the target's raw bfloat16 bytes (empty for a clip whose video failed to decode).

The manifest says what produced the targets: the teacher (its settings and a hash of its weights), the
compression, the frame settings and a hash of the clip list. A run whose settings differ is refused with the
differing settings named (`check_manifest`). A shard appears under its final name only once complete, so a
killed build resumes with the missing shards: no clip twice, none missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct

import ml_dtypes
import numpy as np

from liteframe_jax.core import paths

MANIFEST = "manifest.json"
VERSION = 1


def shard_name(k: int) -> str:
    return f"targets-{k:05d}.array_record"


def clip_list_hash(clips) -> str:
    """sha256 over every clip's (video path, frame indices), in order."""
    h = hashlib.sha256()
    for clip in clips:
        h.update(f"{clip.path}\0{','.join(map(str, clip.frame_indices))}\n".encode())
    return h.hexdigest()


def weights_hash(tree) -> str:
    """sha256 over a parameter tree's names, shapes, dtypes and bytes (sorted by name)."""
    from liteframe_jax.core.tree import flatten
    h = hashlib.sha256()
    for name, value in sorted(flatten(tree).items()):
        a = np.asarray(value)
        h.update(f"{name}:{a.shape}:{a.dtype}\n".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def encode(index: int, clip, target: np.ndarray | None) -> bytes:
    header = json.dumps({"clip": int(index), "path": clip.path, "frames": list(map(int, clip.frame_indices)),
                         "valid": target is not None}).encode()
    body = b"" if target is None else np.asarray(target, ml_dtypes.bfloat16).tobytes()
    return struct.pack("<I", len(header)) + header + body


def decode(record: bytes, shape: tuple[int, ...]) -> tuple[dict, np.ndarray | None]:
    (n,) = struct.unpack("<I", record[:4])
    header = json.loads(record[4:4 + n])
    if not header["valid"]:
        return header, None
    return header, np.frombuffer(record[4 + n:], ml_dtypes.bfloat16).reshape(shape)


def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST)
    if not paths.isfile(path):
        raise FileNotFoundError(f"{folder!r} is not a target cache (no {MANIFEST}): build it with "
                                "python -m liteframe_jax.main --config=configs/targets.py --workdir=DIR")
    return json.loads(paths.read_text(path))


# what a hash in the manifest stands for, in an error that says it differs
_HASHED = {"data.clips_sha256": "the clip list (the videos and their paths, frame counts, clip settings)",
           "teacher.weights_sha256": "the teacher's weights"}


def differences(want: dict, have: dict, prefix: str = "") -> list[str]:
    """`key: run X, cache Y` for every setting that differs (nested dicts compared key by key)."""
    out = []
    for key in sorted(set(want) | set(have)):
        a, b = want.get(key), have.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b and f"{prefix}{key}" in _HASHED:
            out.append(f"{_HASHED[prefix + key]} ({prefix}{key}: run {str(a)[:12]}..., cache {str(b)[:12]}...)")
        elif a != b:
            out.append(f"{prefix}{key}: run {a!r}, cache {b!r}")
    return out


def check_manifest(folder: str, settings: dict) -> dict:
    """The cache's manifest, after checking that it was made with `settings` (what the run would compute)."""
    manifest = read_manifest(folder)
    if manifest.get("version") != VERSION:
        raise ValueError(f"target cache {folder} has format version {manifest.get('version')}; this version reads "
                         f"{VERSION}: build it again")
    diff = differences(settings, manifest["settings"])
    if diff:
        raise ValueError(f"target cache {folder} was made with other settings than this run's: " + "; ".join(diff))
    return manifest


class TargetCache:
    """Random access over a complete cache: `cache[i]` -> clip i's target (N, C) float32, or None for a clip
    whose video failed to decode. Checks that each record is the clip the run asks for. Picklable: Grain's
    workers reopen the shards lazily."""

    def __init__(self, folder: str, clips):
        self.folder, self.clips = folder, clips
        self.manifest = read_manifest(folder)
        self.shape = tuple(self.manifest["target_shape"])
        missing = [shard_name(k) for k in range(self.manifest["num_shards"])
                   if not paths.isfile(os.path.join(folder, shard_name(k)))]
        if missing:
            raise ValueError(f"target cache {folder} is incomplete: {len(missing)} of {self.manifest['num_shards']} "
                             f"shards missing (e.g. {missing[0]}); run the targets job again to finish it")
        if self.manifest["num_clips"] != len(clips):
            raise ValueError(f"target cache {folder} holds {self.manifest['num_clips']} clips, the run has {len(clips)}")
        self._source = None

    def __getstate__(self):
        return {**self.__dict__, "_source": None}

    def __len__(self) -> int:
        return self.manifest["num_clips"]

    def __getitem__(self, i: int) -> np.ndarray | None:
        if self._source is None:
            import grain
            files = [os.path.join(self.folder, shard_name(k)) for k in range(self.manifest["num_shards"])]
            self._source = grain.sources.ArrayRecordDataSource(files)
        header, target = decode(self._source[int(i)], self.shape)
        clip = self.clips[int(i)]
        if header["clip"] != int(i) or header["path"] != clip.path or tuple(header["frames"]) != tuple(
                clip.frame_indices):
            raise ValueError(f"target cache {self.folder}: record {i} belongs to {header['path']} frames "
                             f"{header['frames']}, not to this run's clip {clip.path} {list(clip.frame_indices)}")
        return None if target is None else target.astype(np.float32)
