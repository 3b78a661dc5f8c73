"""python -m liteframe_jax.export --run WORKDIR --out DIR [--step N] [--dtype float32|bfloat16] [--lora merge|adapter]
[--max-shard-size 5GB] [--overwrite]

Writes a CTD or LMA run's model in PyTorch / Hugging Face formats (liteframe_jax/export/run.py says what goes
where). Runs on CPU; the run may have been saved from any mesh or number of processes. Input it refuses ends
with one line naming what is wrong and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m liteframe_jax.export", description=__doc__.split("\n\n")[1])
    p.add_argument("--run", required=True, help="a CTD or LMA run folder (--workdir of its training)")
    p.add_argument("--out", required=True, help="the folder to write (must be empty, or --overwrite)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the written weights (default float32: exact)")
    p.add_argument("--lora", default="merge", choices=("merge", "adapter"),
                   help="LoRA adapters merged into the LLM's weights, or written as a PEFT adapter folder")
    p.add_argument("--max-shard-size", default="5GB", help="safetensors files above this are split (default 5GB)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # reading and writing host arrays; no accelerator needed
    logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's notes on opening a checkpoint read-only
    from liteframe_jax.core import paths
    from liteframe_jax.export.run import export_run

    start = time.time()
    try:
        done = export_run(args.run, args.out, step=args.step, dtype=args.dtype, lora=args.lora,
                          overwrite=args.overwrite, max_shard_size=args.max_shard_size)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 2
    print(f"exported {done.kind} of {paths.resolve(args.run)} step {done.step} to {done.out} "
          f"({done.weight_bytes / 1e6:.1f} MB of {args.dtype} weights, {time.time() - start:.1f} s)")
    for folder, names in done.files.items():
        print(f"  {folder}/: {', '.join(names)}")
    loader = {"video_llm": "LiteFrameVideoLLM", "internvl": "transformers' InternVLForConditionalGeneration"}
    print(f"  README.md: the model card; load it as it says (e.g. {loader.get(done.kind, 'LiteFrameEncoder')}"
          f".from_pretrained)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
