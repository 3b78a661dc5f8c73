"""`python -m liteframe_jax.bench eval_devices`: questions per second of the benchmark harness with each batch
split over 1, 2, ... devices of this process, against one device, at the LMA demo's model sizes.

The model is the LMA demo's (its student, projector and Qwen2 presets, byte tokenizer, 8 frames a question)
with random weights, written as a run folder as training writes one and loaded as `configs/eval.py` loads a
run; the questions are the demo's lettered ones (`data/qa_demo.py`). Each device count first answers one
batch of its own (which compiles), then the timed evaluation runs from scratch in a fresh folder: loading,
decoding, answering, scoring and writing, as `harness.evaluate` runs them for a user.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import jax

from liteframe_jax.assembly.specs import StudentSpec, VideoLLMSpec
from liteframe_jax.bench.export import random_params, write_run
from liteframe_jax.core.configs import load_config_file
from liteframe_jax.data import qa_demo
from liteframe_jax.data.tokenizer import ByteTokenizer
from liteframe_jax.eval import harness
from liteframe_jax.eval.answer import VideoQA
from liteframe_jax.models.qwen2 import Qwen2Config
from liteframe_jax.models.student import StudentConfig
from liteframe_jax.models.video_llm import ProjectorConfig


def demo_spec() -> VideoLLMSpec:
    """The LMA demo's Video LLM (configs/lma.py `demo` with a random student)."""
    tokenizer = ByteTokenizer()
    return VideoLLMSpec(encoder=StudentSpec(StudentConfig.preset("demo", num_frames=8)),
                        projector=ProjectorConfig(kind="mlp", hidden=0, act="gelu", norm=True),
                        llm=Qwen2Config.preset("demo", vocab_size=tokenizer.vocab_size), tokenizer="bytes",
                        num_frames=8)


def bench_eval_devices(device_counts: list[int], questions: int, batch_size: int, folder: str,
                       max_new_tokens: int | None = None):
    """One row per device count: questions per second and the ratio to one device."""
    local = jax.local_devices()
    for n in device_counts:
        if n < 1 or n > len(local) or questions % (batch_size * n):
            raise ValueError(f"{n} devices: give 1 to {len(local)} devices, each count dividing "
                             f"--questions={questions} into whole batches of --batch-size={batch_size} a device")
    qa_root = os.path.join(folder, "qa")
    qa_demo.make_qa_set(qa_root, num_train=2, num_eval=questions)
    spec = demo_spec()
    write_run(os.path.join(folder, "run"), spec, random_params(spec, video_token_id=ByteTokenizer().video_token_id))
    base = VideoQA.from_run(os.path.join(folder, "run"))
    config = load_config_file("eval", "demo")
    config.data.root, config.batch_size = qa_root, batch_size
    if max_new_tokens:
        config.max_new_tokens = max_new_tokens
    one = None
    for n in device_counts:
        model = base.on_devices(local[:n])
        config.max_questions = batch_size * n  # one full batch: compiles what the timed run uses
        harness.evaluate(config, os.path.join(folder, f"warm_{n}"), model)
        config.max_questions = questions
        start = time.perf_counter()
        harness.evaluate(config, os.path.join(folder, f"timed_{n}"), model)
        seconds = time.perf_counter() - start
        row = {"bench": "eval_devices", "devices": n, "questions": questions, "batch_per_device": batch_size,
               "max_new_tokens": int(config.max_new_tokens), "seconds": seconds, "questions_per_s": questions / seconds}
        one = one or (row["questions_per_s"] if n == 1 else None)
        if one:
            row["vs_one_device"] = row["questions_per_s"] / one
        yield row


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m liteframe_jax.bench eval_devices", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1,2,4,8", help="device counts to time, the first 1 (the reference)")
    parser.add_argument("--questions", type=int, default=64, help="questions of the timed evaluation")
    parser.add_argument("--batch-size", type=int, default=8, help="questions a device per answering call")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="tokens an answer may take (default: the demo preset's); a batch generates until its "
                             "longest answer stops")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.devices.split(",")]
    if counts[0] != 1:
        raise SystemExit("error: --devices must start with 1: the other counts are set against one device")
    import flax
    header = {"device": jax.devices()[0].device_kind, "devices": jax.local_device_count(), "cpus": os.cpu_count(),
              "jax": jax.__version__, "flax": flax.__version__, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d"), "command": "python -m liteframe_jax.bench eval_devices " +
              " ".join(argv if argv is not None else __import__("sys").argv[1:])}
    print(json.dumps(header), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="eval_devices_") as folder:
        for row in bench_eval_devices(counts, args.questions, args.batch_size, folder, args.max_new_tokens):
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)
    for r in rows:
        print(f"{r['devices']} device(s): {r['questions_per_s']:.2f} questions/s, {r['vs_one_device']:.2f}x one device")

