"""`bench ctd` / `bench lma` time the trainers' own step: the real CTDTask / LMATask from the `paper` presets
(the `tiny` presets with `--small`), laid out and compiled by train/state.py and train/step.py."""

import jax

from liteframe_jax.bench import training
from liteframe_jax.core import sharding
from liteframe_jax.train import state as state_lib
from liteframe_jax.train.lma import LMATask


def test_lma_bench_times_the_paper_presets_lora_step(tmp_path):
    rows = list(training.bench_lma(1e12, small=True, impl=None, plans=[(1, "none", None, False, 0)]))
    assert len(rows) == 1 and "error" not in rows[0], rows
    row = rows[0]
    config = training.lma_config(True, None, 1, "none")
    assert config.train.trainable == "projector+student+lora" and config.llm.lora.rank > 0  # the preset's choice
    task = LMATask(config, sharding.make_mesh(config.mesh), str(tmp_path), with_data=False)
    layout = state_lib.layout(config, task, jax.random.key(0))
    assert row["trained_params_m"] * 1e6 == layout.num_trained
    assert any("/lora_" in p for p in layout.trainable) and not any(
        p.startswith("llm/") and "/lora_" not in p for p in layout.trainable)  # LoRA adapters, not the LLM's weights
    assert row["seq"] == task.spec.num_visual_tokens + 256 and row["ms"] > 0 and row["step_gib"] > 0


def test_parse_plans():
    assert training.parse_plans("1:full,2:none:full,1:full:scan:enc8,2:full:full:scan") == [
        (1, "full", None, False, 0), (2, "none", "full", False, 0), (1, "full", None, True, 8),
        (2, "full", "full", True, 0)]
