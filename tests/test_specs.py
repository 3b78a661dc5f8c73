"""Specs as data: spec.json round trips, its format version, the checks a spec makes, and the old CTD run
folders that have only config.json."""

import json

import pytest
from flax import nnx
from helpers import load_config

from liteframe_jax.assembly import run_folder
from liteframe_jax.assembly.specs import SPEC_VERSION, StudentSpec, VideoLLMSpec, spec_from_dict
from liteframe_jax.core.tree import flatten, pure_dict
from liteframe_jax.models.qwen2 import LoraConfig, Qwen2Config
from liteframe_jax.models.student import StudentConfig
from liteframe_jax.models.video_llm import ProjectorConfig


def _spec(**changes):
    fields = dict(encoder=StudentSpec(StudentConfig.preset("demo")), projector=ProjectorConfig(),
                  llm=Qwen2Config.preset("demo"), lora=LoraConfig(rank=4, targets="q|v"), num_frames=16,
                  separators="timestamp", system_prompt="Be brief.")
    return VideoLLMSpec(**{**fields, **changes})


def test_spec_json_round_trips_and_builds_the_same_model(tmp_path):
    spec = _spec()
    written = run_folder.write_spec(str(tmp_path), spec)
    read = run_folder.read_spec(str(tmp_path))
    assert read == written == spec
    shapes = lambda s: {k: v.shape for k, v in flatten(pure_dict(nnx.state(nnx.eval_shape(
        lambda: s.build(rngs=nnx.Rngs(0), video_token_id=260))))).items()}
    assert shapes(read) == shapes(spec) and any("lora_a" in k for k in shapes(spec))
    assert (spec.clips, spec.visual_groups, spec.tokens_per_group, spec.num_visual_tokens) == (2, 8, 16, 128)


def test_a_newer_format_or_unknown_kind_is_refused(tmp_path):
    d = {"version": SPEC_VERSION + 1, **_spec().to_dict()}
    with pytest.raises(ValueError, match=f"format version {SPEC_VERSION + 1}"):
        spec_from_dict(d)
    with pytest.raises(ValueError, match="unknown kind 'teacher'"):
        spec_from_dict({"version": SPEC_VERSION, "kind": "teacher"})
    bad = _spec().to_dict()
    bad["llm"]["num_experts"] = 8
    with pytest.raises(ValueError, match="no field.*num_experts"):
        spec_from_dict(bad)


def test_a_spec_that_cannot_work_says_why():
    with pytest.raises(ValueError, match="not a multiple of the encoder's 8-frame clips"):
        _spec(num_frames=12)
    with pytest.raises(ValueError, match="no projector, but the encoder gives width 128"):
        _spec(projector=None, llm=Qwen2Config.preset("demo", hidden_size=256))
    assert _spec(projector=None).projector is None  # equal widths need none


def test_an_old_ctd_run_folder_is_read_from_its_config(tmp_path):
    cfg = load_config("ctd", "demo")
    (tmp_path / "config.json").write_text(cfg.to_json_best_effort())
    spec = run_folder.read_spec(str(tmp_path), StudentSpec)
    assert spec.arch == StudentConfig.preset("demo") and spec.pixel_mean == tuple(cfg.data.pixel_mean)
    with pytest.raises(ValueError, match="holds a 'student' model, not a 'video_llm'"):
        run_folder.read_spec(str(tmp_path), VideoLLMSpec)
    (tmp_path / "config.json").write_text(json.dumps({"trainer": "lma"}))
    with pytest.raises(FileNotFoundError, match="written before run folders held their whole model"):
        run_folder.read_spec(str(tmp_path))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run folder of liteframe_jax"):
        run_folder.read_spec(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        run_folder.read_spec(str(tmp_path / "nowhere"))
