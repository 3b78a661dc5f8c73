"""The TensorBoard event files are read back by an independent reader: CRC-32C from google-crc32c and the
`Event` protocol buffer as tensorboardX compiles it from TensorFlow's event.proto."""

import os
import struct

import pytest

from liteframe_jax.train import tensorboard_out

google_crc32c = pytest.importorskip("google_crc32c")
event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")


def _masked(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _records(path):
    with open(path, "rb") as f:
        data = f.read()
    out, at = [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        assert struct.unpack("<I", data[at + 8:at + 12])[0] == _masked(data[at:at + 8])
        payload = data[at + 12:at + 12 + length]
        assert struct.unpack("<I", data[at + 12 + length:at + 16 + length])[0] == _masked(payload)
        out.append(event_pb2.Event.FromString(payload))
        at += 16 + length
    return out


def test_scalars_read_back_as_tensorboard_events(tmp_path):
    writer = tensorboard_out.EventWriter(str(tmp_path / "tb"), flush_every_s=0.0)
    for step, loss in ((1, 2.5), (2, 1.25), (300_000, -0.5)):
        writer.add_scalar("loss", loss, step)
    writer.add_scalar("eval/cosine", 0.75, 300_000)
    writer.close()
    (name,) = os.listdir(tmp_path / "tb")
    assert name.startswith("events.out.tfevents.")
    events = _records(tmp_path / "tb" / name)
    assert events[0].file_version == "brain.Event:2" and events[0].wall_time > 1.7e9
    got = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
    assert got == [(1, "loss", 2.5), (2, "loss", 1.25), (300_000, "loss", -0.5), (300_000, "eval/cosine", 0.75)]


def test_a_bucket_event_file_is_rewritten_whole_at_each_flush(tmp_path, monkeypatch):
    from liteframe_jax.core import paths
    writes = []
    real_open = paths.open

    def spy_open(path, mode="r", **kw):
        if "w" in mode:
            writes.append(path)
        return real_open(str(path).replace("gs://bucket", str(tmp_path)), mode, **kw)

    monkeypatch.setattr(paths, "is_remote", lambda p: str(p).startswith("gs://"))
    monkeypatch.setattr(paths, "makedirs", lambda p: None)
    monkeypatch.setattr(paths, "open", spy_open)
    writer = tensorboard_out.EventWriter("gs://bucket", flush_every_s=3600)
    writer.add_scalar("loss", 1.0, 1)
    writer.add_scalar("loss", 0.5, 2)
    assert len(writes) == 1  # the header at the start; the scalars wait for a flush
    writer.close()
    assert len(writes) == 2 and writes[0] == writes[1]
    events = _records(str(writes[1]).replace("gs://bucket", str(tmp_path)))
    assert [(e.step, e.summary.value[0].simple_value) for e in events[1:]] == [(1, 1.0), (2, 0.5)]
