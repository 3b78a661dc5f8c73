"""pyproject.toml: the `pytorch` extra installs nothing of requirements.txt (no JAX, no PyAV), the `jax` extra
is requirements.txt, and the package finder takes every folder of the package (data/ and train/ have no
__init__.py)."""

import os
import re
import tomllib

import pytest

from helpers import REPO


def _names(requirements_file: str) -> set[str]:
    names = set()
    for line in open(os.path.join(REPO, requirements_file)):
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[<>=!~\[; ]", line)[0].lower().replace("_", "-"))
    return names


def test_extras_come_from_the_requirements_files_and_pytorch_needs_nothing_of_jax():
    project = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))
    extras = project["tool"]["setuptools"]["dynamic"]["optional-dependencies"]
    assert extras == {"jax": {"file": ["requirements.txt"]}, "pytorch": {"file": ["requirements-pytorch.txt"]}}
    assert "dependencies" not in project["project"]  # `pip install ".[pytorch]"` adds no base dependency
    pytorch, jax = _names("requirements-pytorch.txt"), _names("requirements.txt")
    assert {"torch", "transformers"} <= pytorch and {"jax", "av", "flax"} <= jax
    assert not pytorch & jax, pytorch & jax


def test_the_package_finder_takes_every_folder_of_the_package():
    find_namespace_packages = pytest.importorskip("setuptools").find_namespace_packages  # in venvs of Python < 3.12
    config = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["tool"]["setuptools"]["packages"]["find"]
    found = set(find_namespace_packages(REPO, include=config["include"]))
    folders = {os.path.relpath(root, REPO).replace(os.sep, ".")
               for root, _, files in os.walk(os.path.join(REPO, "liteframe_jax"))
               if any(f.endswith(".py") for f in files)}
    assert config["namespaces"] is True and folders <= found and "liteframe_jax.data" in found


def test_every_data_file_of_the_package_is_package_data():
    """A file the package reads at run time (the planner's shipped profiles) travels with `pip install .`."""
    import fnmatch
    data = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["tool"]["setuptools"]["package-data"]
    for root, _, files in os.walk(os.path.join(REPO, "liteframe_jax")):
        for name in files:
            if name.endswith((".py", ".pyc")):
                continue
            rel = os.path.relpath(os.path.join(root, name), REPO).split(os.sep)
            packaged = any(".".join(rel[:len(pkg.split("."))]) == pkg and
                           any(fnmatch.fnmatch("/".join(rel[len(pkg.split(".")):]), p) for p in patterns)
                           for pkg, patterns in data.items())
            assert packaged, f"{'/'.join(rel)} is not package data in pyproject.toml"
