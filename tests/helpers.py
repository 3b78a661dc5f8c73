"""Shared test helpers: tiny CTD configs on a few generated videos."""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from liteframe_jax.data import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def randomise(model, seed=0):
    """A transformers model with every parameter drawn at random (its own init keeps many at constants, which
    would hide a mapping mistake), in eval mode."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


def load_config(name: str, preset: str | None = None):
    spec = importlib.util.spec_from_file_location(f"configs_{name}", os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def _override(config, overrides: dict):
    """Set dotted keys ('data.num_workers') as --config.x.y=v would."""
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def make_videos(folder, count: int = 4, num_frames: int = 24, seed: int = 0) -> list[str]:
    """Small moving-shape videos (fast to decode)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = os.path.join(str(folder), f"v{i}.mp4")
        demo.write_video(path, demo.render(demo.random_shapes(rng, 2), num_frames, width=96, height=72))
        paths.append(path)
    return paths


def tiny_ctd_config(videos: str, **overrides):
    """The CTD demo on `videos`, one device (tests of sharding ask for more), no worker processes."""
    c = load_config("ctd", "demo")
    c.mesh.num_devices = 1  # the 8 fake CPU devices share 2 cores: a sharded step runs 2.5x slower
    c.data.videos = videos
    c.data.num_workers = 0
    c.data.eval_every_nth_video = 0
    c.eval_at_start = False
    c.eval_every = 0
    c.log_every = 1
    c.total_steps = 4
    c.checkpoint_every = 2
    c.async_checkpointing = False
    return _override(c, overrides)


def tiny_lma_config(train: str, eval_: str | None = None, **overrides):
    """The LMA demo with a random student (no CTD run first), one device, no worker processes; the LLM and the
    projector train, as in the demo."""
    c = load_config("lma", "demo")
    c.student.init = "random"
    c.data.train, c.data.eval = train, eval_
    c.mesh.num_devices = 1
    c.eval_at_start = False
    c.eval_every = 0
    c.log_every = 1
    c.total_steps = 3
    c.batch_size = 8
    c.eval_batch_size = 16
    c.checkpoint_every = 100
    c.async_checkpointing = False
    c.data.buckets = (256,)  # one compiled shape keeps the tests fast
    return _override(c, overrides)


# `python -I` (no PYTHONPATH, no current folder on sys.path), from a folder outside the repository, with this
# package and JAX unimportable: only torch, transformers, a video decoder and the folder's own code answer
_HF_SIDE = """
import json, sys
for name in ("liteframe_jax", "jax", "jaxlib", "flax", "orbax", "optax", "grain"):
    sys.modules[name] = None
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor
folder, videos, question, max_new_tokens = json.loads(sys.argv[1])
processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
video = [] if "<video>" in question else [{"type": "video"}]  # a question may place the video itself
messages = [{"role": "user", "content": video + [{"type": "text", "text": question}]}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
answers, texts, last = [], [], []
for video in videos:
    inputs = processor(text=text, videos=video, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=max_new_tokens)[0, inputs["input_ids"].shape[1]:]
    answers.append(out.tolist())
    texts.append(processor.decode(out, skip_special_tokens=True))
    with torch.no_grad():
        last.append(model(**inputs).logits[0, -1])
print(json.dumps({"text": text, "answers": answers, "texts": texts, "model": type(model).__name__,
                  "processor": type(processor).__name__,
                  "video_effect": float((last[0] - last[-1]).abs().max())}))
"""


def hf_folder_answers(folder: str, videos: list[str], question: str, max_new_tokens: int, tmp_path) -> dict:
    """An exported hf/ folder answering `question` about each video (greedy), through transformers' Auto
    classes in a process that cannot import liteframe_jax: {"answers": token ids, "texts", "text": the
    prompt, "model", "processor", "video_effect": the first and last videos' next-token logits apart}."""
    import json
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=os.path.join(str(tmp_path), "hf_modules"), HF_HUB_OFFLINE="1")
    args = json.dumps([folder, videos, question, max_new_tokens])
    proc = subprocess.run([sys.executable, "-I", "-c", _HF_SIDE, args], capture_output=True, text=True,
                          cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
