"""`python -m liteframe_jax.bench export`: host memory and time of `python -m liteframe_jax.export` on a
synthetic LMA run whose LLM has at least a billion parameters.

The run folder is written as training writes one (spec.json, frozen/, an Orbax checkpoint), with random
weights; the export then runs as a user runs it, in its own process, and that process's peak resident memory
(from the kernel's accounting of the finished child) is set against the size of the weights.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from liteframe_jax.assembly import run_folder
from liteframe_jax.assembly.specs import StudentSpec, VideoLLMSpec
from liteframe_jax.core import checkpoint
from liteframe_jax.core.tree import flatten, pure_dict, unflatten
from liteframe_jax.data.tokenizer import ByteTokenizer
from liteframe_jax.models.qwen2 import LoraConfig, Qwen2Config
from liteframe_jax.models.student import StudentConfig
from liteframe_jax.models.video_llm import ProjectorConfig


def random_params(spec, *, seed: int = 0, video_token_id: int = 0) -> dict:
    """Every parameter of the spec's model drawn at random (norm scales around 1), as host float32 numpy:
    no weight is zero, so a mapping that drops or swaps one shows."""
    build = (lambda: spec.build(rngs=nnx.Rngs(0), video_token_id=video_token_id)) if isinstance(spec, VideoLLMSpec) \
        else (lambda: spec.build(rngs=nnx.Rngs(0)))
    abstract = flatten(pure_dict(nnx.state(nnx.eval_shape(build))))
    rng = np.random.default_rng(seed)
    out = {}
    for path, leaf in abstract.items():
        value = rng.standard_normal(leaf.shape, dtype=np.float32)
        fan_in = leaf.shape[-2] if len(leaf.shape) >= 2 else 1
        value *= 0.5 / np.sqrt(fan_in) if len(leaf.shape) >= 2 else 0.1
        if path.endswith("/scale"):
            value += 1.0
        out[path] = value
    return unflatten(out)


def write_run(workdir: str, spec, params: dict, *, step: int = 1, trained=lambda path: "/lora_" in path
              or not path.startswith("llm/")) -> None:
    """A run folder as training leaves it: spec.json, the parameters that `trained(path)` says trained in an
    Orbax checkpoint at `step`, the others in frozen/."""
    spec = run_folder.write_spec(workdir, spec)
    flat = flatten(params)
    trained_part = unflatten({k: v for k, v in flat.items() if trained(k)})
    frozen_part = {k: v for k, v in flat.items() if not trained(k)}
    if frozen_part:
        checkpoint.save_tree(checkpoint.frozen_dir(workdir), unflatten(frozen_part))
    manager = ocp.CheckpointManager(checkpoint.checkpoint_dir(workdir), item_names=("state",),
                                    options=ocp.CheckpointManagerOptions(create=True))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": trained_part})))
    manager.wait_until_finished()
    manager.close()


def billion_parameter_spec(small: bool) -> VideoLLMSpec:
    """The demo student and a Qwen2 of ~1.0B parameters (untied, LoRA rank 16 on every projection)."""
    llm = (Qwen2Config.preset("demo", vocab_size=512) if small else
           Qwen2Config(vocab_size=32_000, hidden_size=2048, intermediate_size=5504, num_layers=20, num_heads=16,
                       num_kv_heads=4, tie_word_embeddings=False))
    return VideoLLMSpec(encoder=StudentSpec(StudentConfig.preset("demo")), projector=ProjectorConfig(), llm=llm,
                        lora=LoraConfig(rank=16, alpha=32.0), tokenizer="bytes")


# The export's own entry point, then the high-water mark of this process's resident memory since it started
# (VmHWM; the kernel's child rusage would count the parent's memory at fork).
_CHILD = """
import sys
from liteframe_jax.export.__main__ import main
if len(sys.argv) > 1:
    code = main(sys.argv[1:])
else:
    import liteframe_jax.export.run  # what an export loads before it reads a weight
    code = 0
print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1], 'kB peak', flush=True)
sys.exit(code)
"""


def _export_child(args: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS bytes, first output line) of `python -m liteframe_jax.export ARGS` in a process of
    its own (no ARGS: a process that only imports the export, the fixed cost beside the weights)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    if proc.returncode:
        raise RuntimeError(f"export failed ({proc.returncode}):\n{(proc.stdout + proc.stderr)[-2000:]}")
    lines = proc.stdout.strip().splitlines()
    peak = int(lines[-1].split()[0]) * 1024
    return time.perf_counter() - start, peak, lines[0]


def bench_export(*, small: bool = False, folder: str | None = None) -> list[dict]:
    spec = billion_parameter_spec(small)
    root = folder or tempfile.mkdtemp(prefix="bench_export_")
    run, rows = os.path.join(root, "run"), []
    try:
        start = time.perf_counter()
        params = random_params(spec, video_token_id=ByteTokenizer().video_token_id)
        llm_params = sum(v.size for k, v in flatten(params).items() if k.startswith("llm/") and "/lora_" not in k)
        total = sum(v.size for v in flatten(params).values())
        write_run(run, spec, params)
        del params
        print(f"[bench export] synthetic run: {total / 1e9:.3f}B parameters ({llm_params / 1e9:.3f}B in the LLM), "
              f"written in {time.perf_counter() - start:.0f} s", flush=True)
        base = _export_child([])[1]
        for dtype, lora in (("float32", "merge"), ("bfloat16", "merge"), ("bfloat16", "adapter")):
            seconds, peak, line = _export_child(["--run", run, "--out", os.path.join(root, "out"), "--dtype", dtype,
                                                 "--lora", lora, "--overwrite"])
            stored = 4 * total  # float32, as the run holds them
            written = total * (4 if dtype == "float32" else 2)
            row = {"bench": "export", "parameters": int(total), "llm_parameters": int(llm_params), "dtype": dtype,
                   "lora": lora, "seconds": round(seconds, 1), "peak_rss_gb": round(peak / 1e9, 2),
                   "import_only_rss_gb": round(base / 1e9, 2), "weights_float32_gb": round(stored / 1e9, 2),
                   "written_gb": round(written / 1e9, 2), "peak_over_float32_weights": round(peak / stored, 2),
                   "peak_over_written": round(peak / written, 2)}
            rows.append(row)
            print(f"[bench export] {dtype:8s} lora={lora:7s} {seconds:6.1f} s  peak RSS {peak / 1e9:5.2f} GB = "
                  f"{peak / stored:.2f}x the float32 weights, {peak / written:.2f}x what it wrote  ({line})", flush=True)
    finally:
        if folder is None:
            shutil.rmtree(root, ignore_errors=True)
    return rows

