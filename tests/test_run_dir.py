"""The run folder as one object (core/run_dir.py): the names on disk that old run folders were written with,
its records read back (absent ones as absent), metrics.jsonl up to a last line cut by a kill, and the model
card reading the same records."""

import json

import pytest

from liteframe_jax.core import run_dir
from liteframe_jax.core.run_dir import RunDir
from liteframe_jax.export import card


def test_the_names_on_disk_are_those_old_run_folders_have(tmp_path):
    run = RunDir(str(tmp_path))
    root = str(tmp_path)
    assert run.root == root and RunDir(root + "/").root == root
    assert {k: getattr(run, k)[len(root) + 1:] for k in (
        "config", "spec", "tokenizer", "frozen", "checkpoints", "checkpoints_set_aside", "resumed_from", "metrics",
        "tensorboard", "loss_curve", "lock", "video_index", "compilation_cache", "compile_report",
        "nonfinite_report", "demo_videos", "demo_qa", "needle_qa", "needle_test", "demo_ctd")} == {
        "config": "config.json", "spec": "spec.json", "tokenizer": "tokenizer", "frozen": "frozen",
        "checkpoints": "checkpoints", "checkpoints_set_aside": "checkpoints_set_aside",
        "resumed_from": "checkpoints_set_aside/resumed_from.json", "metrics": "metrics.jsonl",
        "tensorboard": "tensorboard", "loss_curve": "loss_curve.png", "lock": "run.lock",
        "video_index": "video_index", "compilation_cache": "compilation_cache",
        "compile_report": "compile_report.json", "nonfinite_report": "nonfinite_report.json",
        "demo_videos": "demo_videos", "demo_qa": "demo_qa", "needle_qa": "needle_qa", "needle_test": "needle_test",
        "demo_ctd": "ctd"}
    assert run.traceback() == f"{root}/error_traceback.txt"
    assert run.traceback(1, 2) == f"{root}/error_traceback.process-1.txt"
    assert RunDir("gs://bucket/run/").config == "gs://bucket/run/config.json"  # a URL stays a URL


def test_records_read_back_and_absent_ones_are_none(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    assert run.read_config() is None and run.read_spec() is None and run.read_metrics() == []
    run.write_config(json.dumps({"trainer": "ctd"}))
    assert run.read_config() == {"trainer": "ctd"}


def test_metrics_read_up_to_a_last_line_cut_by_a_kill(tmp_path):
    run = RunDir(str(tmp_path))
    with open(run.metrics, "w") as f:
        f.write('{"step": 1, "loss": 2.0}\n{"step": 2, "eval_cosine": 0.25}\n{"step": 3, "eval_cos')
    assert run.read_metrics() == [{"step": 1, "loss": 2.0}, {"step": 2, "eval_cosine": 0.25}]
    assert card.logged_evaluation(str(tmp_path), step=5) == (2, {"cosine": 0.25})
    assert card.logged_evaluation(str(tmp_path), step=1) is None
    with open(run.metrics, "w") as f:  # a damaged line before the last is no kill's doing: said, with its number
        f.write('{"step": 1}\n{"ste\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl line 2 is not JSON"):
        run.read_metrics()
    assert run_dir.parse_metrics("") == []
