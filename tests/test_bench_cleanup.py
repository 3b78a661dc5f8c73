"""A bench's temporary files go when the command ends, also when the bench fails."""

import os
import tempfile

import pytest

from liteframe_jax.bench import __main__ as bench_main


def test_a_failing_bench_leaves_no_temporary_files(monkeypatch, capsys):
    made = []

    def failing_export(small):
        folder = tempfile.mkdtemp(prefix="bench_export_")  # as the export bench makes its folder
        with open(os.path.join(folder, "model.safetensors"), "wb") as f:
            f.write(b"\0" * 1024)
        made.append(folder)
        raise RuntimeError("the bench failed")
        yield  # a generator of rows, as every bench is

    monkeypatch.setattr(bench_main, "bench_export", failing_export)
    with pytest.raises(RuntimeError, match="the bench failed"):
        bench_main.main(["export", "--small"])
    assert made and not os.path.exists(made[0])
    scratch = os.path.dirname(made[0])  # the command's own folder, gone with what the bench left in it
    assert os.path.basename(scratch).startswith("liteframe_bench_") and not os.path.exists(scratch)
    assert tempfile.tempdir is None
    assert "[bench] export: started" in capsys.readouterr().out
