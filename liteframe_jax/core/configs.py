"""The configs in `configs/` by name, for code that needs a preset (the jobs table, the benches, tests)."""

from __future__ import annotations

import importlib.util
import os

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


def load_config_file(name: str, preset: str | None = None):
    """configs/NAME.py's get_config(preset)."""
    path = os.path.join(CONFIG_DIR, f"{name}.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no config {name!r}: {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"liteframe_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)
