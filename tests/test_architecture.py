"""The package's floors: every import goes down (or stays in its room), and no two files import each other
in a circle. Read from the source with `ast`, so an import inside a function counts too."""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "liteframe_jax")

# room -> floor; a file may import its own room and any room on a lower floor. Rooms on one floor know
# nothing of each other (models and data).
FLOORS = {"core": 0, "pytorch": 0, "models": 1, "data": 1, "convert": 2, "assembly": 3, "eval": 4, "export": 4,
          "train": 5, "plan": 5, "bench": 6, "jobs": 7, "main": 8}
# the PyTorch side of an export runs where JAX is not installed: these are all it may import beside the
# standard library and its own room
# (safetensors comes with transformers; the processor tries PyAV, then OpenCV, to decode a path, needing neither)
PYTORCH_IMPORTS = {"encoder": {"torch"}, "weights": {"torch", "safetensors"}, "projector": {"torch"},
                   "video_llm": {"torch", "transformers"}, "hf_config": {"transformers"},
                   "hf_model": {"torch", "transformers"}, "hf_processor": {"torch", "transformers", "av", "cv2"},
                   # lmms-eval's model: where lmms-eval runs (loguru and tqdm come with it)
                   "lmms_eval_model": {"torch", "transformers", "lmms_eval", "loguru", "tqdm"},
                   "lmms_eval_plugin": {"lmms_eval"},
                   "__init__": set()}
ALLOWED_CYCLES: list[set[str]] = []  # none: the block-tail kernels share their helpers through a third file


def _modules() -> dict[str, str]:
    out = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, name), os.path.dirname(PACKAGE))[:-3]
                mod = rel.replace(os.sep, ".")
                out[mod[:-len(".__init__")] if mod.endswith(".__init__") else mod] = os.path.join(root, name)
    return out


def _imports(path: str, modules: dict) -> set[str]:
    """The package modules a file imports (`from pkg import mod` counts as importing pkg.mod)."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("liteframe_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("liteframe_jax"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in modules else node.module)
    return {m for m in found if m in modules and m != "liteframe_jax"}


def _room(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


@pytest.fixture(scope="module")
def graph():
    modules = _modules()
    return {m: _imports(p, modules) - {m} for m, p in modules.items()}


def test_every_file_lives_in_a_known_room(graph):
    assert {_room(m) for m in graph if m != "liteframe_jax"} <= set(FLOORS)


def test_imports_only_go_down(graph):
    wrong = []
    for mod, deps in graph.items():
        if mod == "liteframe_jax":
            continue
        for dep in deps:
            a, b = _room(mod), _room(dep)
            if a != b and FLOORS[b] >= FLOORS[a]:
                wrong.append(f"{mod} -> {dep}")
    assert not wrong, "imports that do not go down:\n" + "\n".join(sorted(wrong))


def test_nothing_imports_the_bench_entry_point(graph):
    assert not [m for m, deps in graph.items() if "liteframe_jax.bench.__main__" in deps]


def test_no_import_circles_between_files(graph):
    """Strongly connected components of the import graph (Tarjan): each must be one file, or an allowed pair."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            components.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    circles = [c for c in components if len(c) > 1 and c not in ALLOWED_CYCLES]
    assert not circles, f"import circles: {circles}"


def test_the_pytorch_room_needs_neither_jax_nor_the_rest_of_the_package(graph):
    import sys
    folder = os.path.join(PACKAGE, "pytorch")
    assert {f[:-3] for f in os.listdir(folder) if f.endswith(".py")} == set(PYTORCH_IMPORTS)
    for name, allowed in PYTORCH_IMPORTS.items():
        tops = set()
        for node in ast.walk(ast.parse(open(os.path.join(folder, f"{name}.py")).read())):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops.add(node.module.split(".")[0])
        third_party = tops - set(sys.stdlib_module_names) - {"__future__", "liteframe_jax"}
        assert third_party <= allowed, (name, third_party)
        assert {_room(m) for m in graph[f"liteframe_jax.pytorch.{name}".replace(".__init__", "")]} <= {"pytorch"}


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The rules above fail on a file that imports upwards (so a passing run means something)."""
    bad = tmp_path / "bad.py"
    bad.write_text("from liteframe_jax.train import loop\n")
    modules = _modules()
    deps = _imports(str(bad), modules)
    assert deps == {"liteframe_jax.train.loop"} and FLOORS["train"] >= FLOORS["models"]
