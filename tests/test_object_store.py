"""Runs whose workdir and videos are in a bucket (`gs://`), against a local Google Cloud Storage emulator: the
same JSON API that gcsfs (files, metrics, videos), TensorStore (Orbax checkpoints) and google-cloud-storage
(TensorBoard) speak to the real service, held in memory."""

import gc
import json
import logging
import os
import socket

import jax
import numpy as np
import pytest
from helpers import make_videos, tiny_ctd_config

from liteframe_jax.core import checkpoint, paths
from liteframe_jax.export.run import export_run
from liteframe_jax.jobs import train as run

BUCKET = "liteframe-test"


def _downloads_say_their_generation(emulator) -> None:
    """The real service answers a download with its object's `x-goog-generation`, which TensorStore reads (a
    checkpoint's OCDBT manifest is read conditionally on it); the emulator leaves the header out."""
    from gcp_storage_emulator.handlers import objects
    plain = objects.download
    if getattr(plain, "says_generation", False):
        return

    def download(request, response, storage, *args, **kwargs):
        plain(request, response, storage, *args, **kwargs)
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except Exception:  # a missing object: the 404 stands
            return
        response["x-goog-generation"], response["x-goog-metageneration"] = obj["generation"], obj["metageneration"]
    download.says_generation = True
    objects.download = download  # objects.get calls it by name; the route table holds it too
    for _, methods in emulator.HANDLERS:
        for method, handler in list(methods.items()):
            if handler is plain:
                methods[method] = download


@pytest.fixture(scope="module")
def gcs():
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    pytest.importorskip("gcsfs")
    _downloads_say_their_generation(emulator)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    server = emulator.create_server("localhost", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    logging.getLogger("gcsfs").setLevel(logging.ERROR)  # "no default credentials": none are needed here
    url = f"http://localhost:{port}"
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL")}
    os.environ.update(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url)
    yield f"gs://{BUCKET}"
    gc.collect()  # TensorBoard's GCS writers upload once more when collected: while the emulator still answers
    server.stop()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def test_paths_in_a_bucket(gcs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = f"{gcs}/paths"
    assert paths.resolve(root + "/") == root  # a URL stays a URL (os.path.abspath would make it ./gs:/...)
    paths.makedirs(root)
    paths.write_text(f"{root}/a/one.json", '{"x": 1}')
    paths.write_text(f"{root}/a/b/two.json", "[]")
    assert paths.isfile(f"{root}/a/one.json") and paths.isdir(f"{root}/a") and not paths.exists(f"{root}/nothing")
    assert paths.listdir(f"{root}/a") == ["b", "one.json"]
    assert paths.glob(f"{root}/**/*.json") == [f"{root}/a/b/two.json", f"{root}/a/one.json"]
    assert paths.glob(f"{root}/a/*.json") == [f"{root}/a/one.json"]
    with paths.AppendFile(f"{root}/log.jsonl") as log:
        log.write("1\n")
        log.flush()
        log.write("2\n")
    with paths.AppendFile(f"{root}/log.jsonl") as log:  # a second start continues the file
        log.write("3\n")
    assert paths.read_text(f"{root}/log.jsonl") == "1\n2\n3\n"
    paths.replace(f"{root}/a/one.json", f"{root}/moved.json")
    assert not paths.exists(f"{root}/a/one.json") and json.loads(paths.read_text(f"{root}/moved.json")) == {"x": 1}
    with paths.local_copy(f"{root}/moved.json") as local:
        assert os.path.isfile(local) and open(local).read() == '{"x": 1}'
    assert not os.path.exists(local)
    with pytest.raises(ValueError, match="cannot append"):
        paths.open(f"{root}/log.jsonl", "a")
    assert os.listdir(tmp_path) == []  # nothing of it landed on the local disk


def test_a_missing_backend_or_an_unknown_scheme_is_an_error_naming_it(monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name in ("s3fs", "tensorflow")
                        else find_spec(name))
    with pytest.raises(ModuleNotFoundError, match="pip install s3fs"):
        paths.resolve("s3://bucket/run")
    with pytest.raises(ValueError, match="ftp:// is not a supported location"):
        paths.resolve("ftp://host/run")


def _config(videos, total_steps):
    # a learning-rate schedule that does not follow total_steps, so a run of 2 + 2 steps is the run of 4
    return tiny_ctd_config(videos, total_steps=total_steps, checkpoint_every=2, **{
        "optimizer.decay_steps": 100, "optimizer.warmup_steps": 1, "mesh.num_devices": 1})


def _losses(workdir):
    rows = [json.loads(line) for line in paths.read_text(f"{workdir}/metrics.jsonl").splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_ctd_run_in_a_bucket_resumes_exactly(gcs, tmp_path, monkeypatch):
    """Workdir and videos in the bucket: the run checkpoints there, a second start resumes from it, and the
    losses and parameters equal those of the same run on the local disk."""
    local_videos = make_videos(tmp_path / "videos", count=4, num_frames=24)
    for v in local_videos:
        paths.copy(v, f"{gcs}/videos/{os.path.basename(v)}")
    monkeypatch.chdir(tmp_path)
    workdir = f"{gcs}/runs/ctd"
    first, _ = run(_config(f"{gcs}/videos", 2), workdir)
    assert first.step == 2 and checkpoint.has_checkpoint(workdir)
    resumed, _ = run(_config(f"{gcs}/videos", 4), workdir)
    assert resumed.step == 4 and "resumed from this workdir at step 2" in resumed.origin
    run(_config(str(tmp_path / "videos"), 4), str(tmp_path / "reference"))
    assert _losses(workdir) == _losses(str(tmp_path / "reference"))
    got, _ = checkpoint.restore_params(workdir)
    want, _ = checkpoint.restore_params(str(tmp_path / "reference"))
    jax.tree.map(np.testing.assert_array_equal, got, want)
    names = paths.listdir(workdir)
    assert {"checkpoints", "config.json", "spec.json", "metrics.jsonl", "loss_curve.png", "tensorboard"} <= set(names)
    assert sorted(os.listdir(tmp_path)) == ["reference", "videos"]  # no local folder named gs:
    # the export reads the run from the bucket, its card too: the config and a held-out row logged there, up to
    # a last line cut by a kill
    metrics = f"{workdir}/metrics.jsonl"
    paths.write_text(metrics, paths.read_text(metrics) + '{"step": 4, "eval_cosine": 0.5}\n{"step": 4, "eval_')
    exported = export_run(workdir, str(tmp_path / "exported"))
    card = open(tmp_path / "exported" / "README.md").read()
    assert exported.step == 4 and f"Exported from the run `{workdir}` at step 4" in card
    assert "| trainer | ctd (preset `demo`) |" in card and "Held-out evaluation at step 4" in card
    assert "| cosine | 0.5000 |" in card
