"""lmms-eval runs an exported Hugging Face folder as `--model liteframe` (liteframe_jax/pytorch/lmms_eval_model.py):
its evaluator, in a process that cannot import JAX and finds the model through the package's entry point, on a
local task in lmms-eval's published task layout (a YAML with `doc_to_visual` / `doc_to_text` in a `utils.py`, on
its include path) over the demo's multiple-choice questions, gives the built-in harness's answers
(liteframe_jax/eval/harness.py) word for word. The model is the tiny random Video LLM of test_hf_export.py
(written and exported in seconds, no training).

Needs lmms-eval installed (`pip install --no-deps -r requirements-lmms-eval.txt`); skipped with that reason where
it is not. Run alone: `python -m pytest -q tests/test_lmms_eval_model.py` (about 30 s on 2 cores).
"""

import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib

import pytest

from helpers import REPO, load_config
from liteframe_jax.bench.export import random_params, write_run
from liteframe_jax.data import qa_demo
from liteframe_jax.data.tokenizer import ByteTokenizer
from liteframe_jax.eval import harness
from liteframe_jax.eval.answer import VideoQA
from liteframe_jax.export.__main__ import main as export_main
from test_export import VIDEO_LLM

INSTALL = "lmms-eval 0.7.3 is not installed (pip install --no-deps -r requirements-lmms-eval.txt)"
try:
    LMMS_VERSION = importlib.metadata.version("lmms_eval")
except importlib.metadata.PackageNotFoundError:
    LMMS_VERSION = None
if LMMS_VERSION != "0.7.3":
    pytest.skip(f"{INSTALL}; found {LMMS_VERSION}", allow_module_level=True)

MAX_NEW_TOKENS = 8  # configs/eval.py's for the demo

# A task as lmms-eval publishes its own (tasks/<name>/<name>.yaml + utils.py), over the demo's eval_mc.json. Its
# prompt is written here from the demo's format (data/qa_demo.py), not taken from this package.
TASK_YAML = """\
dataset_path: json
dataset_kwargs:
  data_files:
    test: {annotation}
task: liteframe_demo
test_split: test
output_type: generate_until
doc_to_visual: !function utils.doc_to_visual
doc_to_text: !function utils.doc_to_text
doc_to_target: answer
generation_kwargs:
  max_new_tokens: {max_new_tokens}
  temperature: 0
  do_sample: false
  until: []
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
lmms_eval_specific_kwargs:
  default:
    post_prompt: "Answer with the option's letter from the given choices directly."
metadata:
  - version: 0.0
"""
TASK_UTILS = """\
import os

ROOT = {root!r}


def doc_to_visual(doc):
    return [os.path.join(ROOT, doc["video"])]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    options = "\\n".join(f"{{'ABCDEF'[i]}}. {{o}}" for i, o in enumerate(doc["options"]))
    return f"{{doc['question']}}\\n{{options}}\\n{{lmms_eval_specific_kwargs['post_prompt']}}"


def process_results(doc, results):
    return {{"accuracy": float(results[0].strip()[:1] == doc["answer"])}}
"""

# lmms-eval's evaluator, as `lmms-eval --model liteframe --model_args pretrained=HF --tasks liteframe_demo
# --include_path TASKS --batch_size 1 --device cpu --log_samples` calls it (the command line adds its argument
# parser and a table at the end), in a process where JAX cannot be imported. Its task index is the include path
# alone: indexing lmms-eval's two thousand tasks would take 5 s of CPU.
_EVALUATE = """
import json, sys
for name in ("jax", "jaxlib", "flax", "orbax", "optax", "grain"):
    sys.modules[name] = None
import liteframe_jax.pytorch.lmms_eval_model  # before lmms-eval's registry, whose entry points then load: no circle
from lmms_eval.evaluator import simple_evaluate
from lmms_eval.tasks import TaskManager
hf, tasks = sys.argv[1:]
results = simple_evaluate(model="liteframe", model_args=f"pretrained={hf}", tasks=["liteframe_demo"], batch_size=1,
                          device="cpu", log_samples=True,
                          task_manager=TaskManager(include_path=tasks, include_defaults=False, model_name="liteframe"))
print(json.dumps({"samples": results["samples"]["liteframe_demo"], "results": results["results"]["liteframe_demo"]},
                 default=str))
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(run folder, its export's hf/ folder, the demo QA folder with 8 held-out questions)."""
    root = tmp_path_factory.mktemp("lmms_eval_model")
    run = str(root / "run")
    params = random_params(VIDEO_LLM, seed=9, video_token_id=ByteTokenizer().video_token_id)
    # answers of 8 printable characters, which compare letter for letter: the LLM's output columns of every token
    # but printable ASCII are zeroed, so greedy decoding never picks one (half the bytes decode to U+FFFD, and a
    # random model ends most answers at once)
    head = params["llm"]["lm_head"]
    head[:, :32], head[:, 127:] = 0, 0
    write_run(run, VIDEO_LLM, params, step=3)
    assert export_main(["--run", run, "--out", str(root / "export")]) == 0
    qa_root = str(root / "demo_qa")
    qa_demo.make_qa_set(qa_root, num_train=0, num_eval=8, num_frames=16, size=64, seed=3)
    return run, str(root / "export" / "hf"), qa_root


def _installed(folder: str) -> str:
    """A folder laid out as `pip install .` leaves site-packages: the package (a link to this one) beside its
    distribution metadata, written from pyproject.toml with the `lmms_eval.models` entry point, so lmms-eval finds
    the model as it does once the package is installed (and nothing else of the repository is on the path)."""
    project = tomllib.load(open(os.path.join(REPO, "pyproject.toml"), "rb"))["project"]
    info = os.path.join(folder, f"liteframe_jax-{project['version']}.dist-info")
    os.makedirs(info)
    os.symlink(os.path.join(REPO, "liteframe_jax"), os.path.join(folder, "liteframe_jax"))
    with open(os.path.join(info, "METADATA"), "w") as f:
        f.write(f"Metadata-Version: 2.1\nName: liteframe_jax\nVersion: {project['version']}\n")
    with open(os.path.join(info, "entry_points.txt"), "w") as f:
        for group, points in project["entry-points"].items():
            f.write(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items()))
    return folder


def test_lmms_eval_answers_the_demo_questions_as_the_harness_does(demo, tmp_path):
    assert int(importlib.metadata.version("filelock").split(".")[0]) < 4, \
        "lmms-eval 0.7.3's evaluator imports filelock._api, which filelock 4 removed: requirements-lmms-eval.txt"
    run, hf, qa_root = demo
    cfg = load_config("eval", "demo")
    cfg.data.root, cfg.decode_workers, cfg.max_new_tokens = qa_root, 2, MAX_NEW_TOKENS
    harness.evaluate(cfg, str(tmp_path / "harness"), VideoQA.from_run(run))
    ours = harness.read_done(str(tmp_path / "harness" / "results.jsonl"))

    task = tmp_path / "tasks" / "liteframe_demo"
    task.mkdir(parents=True)
    (task / "liteframe_demo.yaml").write_text(TASK_YAML.format(annotation=os.path.join(qa_root, "eval_mc.json"),
                                                               max_new_tokens=MAX_NEW_TOKENS))
    (task / "utils.py").write_text(TASK_UTILS.format(root=qa_root))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LMMS_EVAL_PLUGINS")}
    env.update(PYTHONPATH=_installed(str(tmp_path / "site")), HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "hf_modules"))
    # one thread: the tiny model gains nothing from two, which spin against other work on a shared CPU (10x slower)
    env.update(OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _EVALUATE, hf, str(tmp_path / "tasks")], capture_output=True,
                          text=True, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    lmms = json.loads(proc.stdout.strip().splitlines()[-1])
    # one request per document, in the documents' order (doc_id); `filtered_resps`: the answer (no filter configured)
    ids = [q["id"] for q in json.load(open(os.path.join(qa_root, "eval_mc.json")))]
    assert all(len(s["filtered_resps"]) == 1 for s in lmms["samples"])
    theirs = {ids[s["doc_id"]]: s["filtered_resps"][0] for s in lmms["samples"]}
    assert len(theirs) == len(ours) == 8
    assert theirs == {i: row["raw"] for i, row in ours.items()}
    assert len(set(theirs.values())) > 1  # the answers differ between videos: the frames reach the model
    # and lmms-eval scored those answers with the task's rule
    want = sum(row["raw"].strip()[:1] == row["answer"] for row in ours.values()) / len(ours)
    assert lmms["results"]["accuracy,none"] == pytest.approx(want)


def test_the_model_refuses_what_it_cannot_answer_and_honours_the_task_settings(demo):
    """lmms-eval's registry resolves the entry point's manifest to the model; unknown model args, batches,
    images, clipped videos and loglikelihood requests end with errors naming them; `until` cuts the answer."""
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from liteframe_jax.pytorch.lmms_eval_model import LiteFrameLmms
    from liteframe_jax.pytorch.lmms_eval_plugin import model_manifest
    registry = ModelRegistryV2()
    registry.register_manifest(model_manifest())
    assert registry.get_model_class("liteframe") is LiteFrameLmms and not LiteFrameLmms.is_simple
    _, hf, qa_root = demo
    with pytest.raises(ValueError, match=r"unknown model_args \['max_num_frames'\]"):
        LiteFrameLmms(pretrained=hf, max_num_frames=32)
    with pytest.raises(ValueError, match="batch_size '4': it answers one request at a time"):
        LiteFrameLmms(pretrained=hf, batch_size="4")
    model = LiteFrameLmms(pretrained=hf, device="cpu")
    video = os.path.join(qa_root, "videos", "eval_0000.mp4")
    ask = lambda *items: [{"role": "user", "content": [*items, {"type": "text", "text": "What colour is the shape?"}]}]
    with pytest.raises(ValueError, match="answers about videos and text; the request holds image"):
        model.prompt(ask({"type": "image", "url": "frame.png"}))
    with pytest.raises(ValueError, match="asked from 1.0 to 2.0 s; the model samples its frames over the whole"):
        model.prompt(ask({"type": "video", "url": video, "start_time": 1.0, "end_time": 2.0}))
    with pytest.raises(NotImplementedError, match="loglikelihood requests are not supported"):
        model.loglikelihood([])
    text, videos = model.prompt(ask({"type": "video", "url": video}))
    assert videos == [video]
    assert text.endswith("user\n<video>\nWhat colour is the shape?<|im_end|>\n<|im_start|>assistant\n")
    greedy = {"max_new_tokens": MAX_NEW_TOKENS, "temperature": 0, "do_sample": False}
    full = model.answer(ask({"type": "video", "url": video}), greedy)
    assert len(full) == MAX_NEW_TOKENS
    stop = full[-2:]  # the answer ends before the first place the stop string appears, as lmms-eval's models cut
    cut = model.answer(ask({"type": "video", "url": video}), {**greedy, "until": ["", stop]})
    assert cut == full[:full.index(stop)]
    settings, until = model.generation({"temperature": 0.7, "top_p": 0.9, "until": "\n\n"})
    assert settings == {"max_new_tokens": 128, "do_sample": True, "num_beams": 1, "temperature": 0.7, "top_p": 0.9,
                        "top_k": None} and until == ["\n\n"]
