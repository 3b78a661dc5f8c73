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
