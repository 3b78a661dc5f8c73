"""Running a job from a config: dispatch on `config.trainer`, and the end-of-run summary.

Kept apart from `main.py` (which defines the command-line flags) so that one job can start another, e.g.
the LMA demo trains its CTD student first.
"""

from __future__ import annotations

import os

TRAINERS = ("ctd", "lma")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load_config_file(name: str, preset: str | None = None):
    """configs/NAME.py's get_config(preset), for code that starts one job from another."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"liteframe_configs_{name}", os.path.join(CONFIG_DIR, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def run(config, workdir: str):
    """Run the trainer named by `config.trainer`; returns its Result."""
    from liteframe_jax.train import sharding
    from liteframe_jax.train.loop import train
    if config.trainer not in TRAINERS:
        raise ValueError(f"config.trainer={config.trainer!r}; known trainers: {TRAINERS}")
    mesh = sharding.make_mesh(config.mesh)
    if config.trainer == "ctd":
        from liteframe_jax.train.ctd import CTDTask
        task = CTDTask(config, mesh, workdir)
    else:
        from liteframe_jax.train.lma import LMATask
        task = LMATask(config, mesh, workdir)
    result = train(config, workdir, task)
    return result, task


def print_summary(result, task) -> None:
    from liteframe_jax.train.metrics import log
    lines = [
        "",
        f"done: step {result.step} ({result.origin}); compile {result.compile_seconds:.1f}s, "
        f"train {result.train_seconds:.1f}s",
        f"checkpoint: {result.checkpoint_dir}",
        f"metrics:    {result.metrics_path} (TensorBoard: {os.path.join(result.workdir, 'tensorboard')})",
        f"loss curve: {result.curve_path}",
        *task.summary(result),
    ]
    log("\n".join(lines))
