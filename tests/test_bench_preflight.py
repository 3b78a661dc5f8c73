"""Bench commands that cannot run on this machine (a CPU) refuse at once, in one line naming what they need."""

import pytest

from liteframe_jax.bench.__main__ import main


@pytest.mark.parametrize("argv, said", [
    (["all", "--attention=cudnn"], "error: ctd, encoders, latency, lma, matmul at full size need a GPU or TPU (JAX "
                                   "runs on cpu here): add --small for a CPU-sized run; --attention=cudnn needs a GPU"),
    (["targets"], "error: targets at full size needs a GPU or TPU (JAX runs on cpu here): add --small"),
    (["ctd", "--small", "--attention=cudnn"], "error: --attention=cudnn needs a GPU (JAX runs on cpu here): add "
                                              "--attention=xla"),
    (["latency", "--small", "--attention=xla", "--decode", "--decoder=nvdec"], "error: --decoder=nvdec cannot run "
                                                                               "here: "),
])
def test_a_bench_that_needs_a_gpu_refuses_on_a_cpu(argv, said, capsys, monkeypatch):
    from liteframe_jax.bench import __main__ as bench_main
    monkeypatch.setattr(bench_main, "matmul_ceiling", lambda *a: pytest.fail("measured before refusing"))
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and err.startswith(said) and err.count("\n") == 1, err


def test_what_runs_on_a_cpu_is_not_refused():
    from liteframe_jax.bench import preflight
    assert preflight.problems({"export", "index", "pipeline"}, small=False, attention=["cudnn"], decoder="pyav",
                              decode=None, backend="cpu", nvdec_problem=None) == []
    assert preflight.problems({"ctd", "latency"}, small=True, attention=[None], decoder="pyav", decode="synthetic",
                              backend="cpu", nvdec_problem="no GPU") == []
    assert preflight.problems({"ctd"}, small=False, attention=["cudnn"], decoder="pyav", decode=None, backend="gpu",
                              nvdec_problem=None) == []
