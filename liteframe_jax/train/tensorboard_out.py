"""TensorBoard scalars, written as TensorBoard's event files without TensorBoard, TensorFlow or torch.

An event file (`events.out.tfevents.<time>.<host>`) is a TFRecord stream: each record is its length (uint64),
the length's masked CRC-32C, the payload, the payload's masked CRC-32C. The first payload is an `Event` with
`file_version = "brain.Event:2"`, then one `Event {wall_time, step, summary {value {tag, simple_value}}}` per
logged scalar. Those few protocol-buffer fields are encoded here by hand, which is what keeps a training start
from importing a writer library (tensorboardX imports torch, seconds per start).

The file goes through `core.paths`: appended to on local disk, rewritten whole at each flush in a bucket
(object stores cannot append), at most every `flush_every_s` and at `close`.

A resumed run first drops the events past its checkpoint's step from the folder's files (`drop_steps_after`):
the steps since that checkpoint are logged again, and TensorBoard would otherwise show both attempts.
"""

from __future__ import annotations

import os
import socket
import struct
import time

from liteframe_jax.core import paths


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # the Castagnoli polynomial, reflected
        table.append(c)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def record(payload: bytes) -> bytes:
    """One TFRecord: length, its masked CRC, the payload, its masked CRC."""
    length = struct.pack("<Q", len(payload))
    return length + struct.pack("<I", masked_crc(length)) + payload + struct.pack("<I", masked_crc(payload))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def event(wall_time: float, step: int = 0, *, file_version: str | None = None,
          scalar: tuple[str, float] | None = None) -> bytes:
    """An encoded `tensorflow.Event` (fields: 1 wall_time double, 2 step int64, 3 file_version, 5 summary)."""
    out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
    if step:
        out += _varint(2 << 3 | 0) + _varint(step & 0xFFFFFFFFFFFFFFFF)
    if file_version is not None:
        out += _length_delimited(3, file_version.encode())
    if scalar is not None:
        tag, value = scalar  # Summary.Value: 1 tag, 2 simple_value (float)
        summary_value = _length_delimited(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack("<f", value)
        out += _length_delimited(5, _length_delimited(1, summary_value))
    return out


def read_records(data: bytes) -> list[bytes]:
    """The payloads of a TFRecord stream; a record cut short by a kill (or failing its CRC) ends it."""
    out, at = [], 0
    while at + 12 <= len(data):
        length_bytes = data[at:at + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        end = at + 12 + length + 4
        if struct.unpack("<I", data[at + 8:at + 12])[0] != masked_crc(length_bytes) or end > len(data):
            break
        payload = data[at + 12:end - 4]
        if struct.unpack("<I", data[end - 4:end])[0] != masked_crc(payload):
            break
        out.append(payload)
        at = end
    return out


def event_step(payload: bytes) -> int:
    """An encoded `Event`'s step (field 2; 0 when absent), reading past the other fields by their wire type."""
    at = 0

    def varint() -> int:
        nonlocal at
        value = shift = 0
        while True:
            byte = payload[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value
    while at < len(payload):
        key = varint()
        field, wire = key >> 3, key & 7
        if wire == 0:
            value = varint()
            if field == 2:
                return value - (1 << 64) if value >> 63 else value
        elif wire == 1:
            at += 8
        elif wire == 2:
            at += varint()
        elif wire == 5:
            at += 4
        else:
            raise ValueError(f"an Event with wire type {wire}: not an event file this module reads")
    return 0


def _has_file_version(payload: bytes) -> bool:
    return b"brain.Event:" in payload


def drop_steps_after(folder: str, step: int) -> int:
    """Rewrite the event files in `folder` without the scalars logged past `step` (all of them when `step` is
    negative); a file left with none is removed. The number of events dropped."""
    if not paths.isdir(folder):
        return 0
    dropped = 0
    for name in paths.listdir(folder):
        if not name.startswith("events.out.tfevents."):
            continue
        path = os.path.join(folder, name)
        with paths.open(path, "rb") as f:
            payloads = read_records(f.read())
        kept = [p for p in payloads if _has_file_version(p) or event_step(p) <= step]
        dropped += len(payloads) - len(kept)
        if all(_has_file_version(p) for p in kept):
            paths.remove(path)
        elif len(kept) < len(payloads):
            with paths.open(path, "wb") as f:
                f.write(b"".join(record(p) for p in kept))
    return dropped


class EventWriter:
    """Scalars of one run into one new event file in `folder` (local or a bucket)."""

    def __init__(self, folder: str, flush_every_s: float = 60.0):
        paths.makedirs(folder)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path, self.flush_every_s = os.path.join(folder, name), flush_every_s
        self._remote = paths.is_remote(folder)
        self._pending, self._written, self._last_flush = bytearray(), bytearray(), time.monotonic()
        self._pending += record(event(time.time(), file_version="brain.Event:2"))
        self.flush()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._pending += record(event(time.time(), int(step), scalar=(tag, float(value))))
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        if self._remote:
            self._written += self._pending
            with paths.open(self.path, "wb") as f:
                f.write(bytes(self._written))
        else:
            with open(self.path, "ab") as f:
                f.write(self._pending)
        self._pending.clear()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()
