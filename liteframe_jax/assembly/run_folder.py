"""What a run folder holds beside its checkpoints, so that it alone is enough to use the model it produced (the
names are core/run_dir.py's):

    WORKDIR/config.json    the training config (for people and for resuming; readers never parse it)
    WORKDIR/spec.json      the model's spec (assembly/specs.py)
    WORKDIR/tokenizer/     the tokenizer files, copied from the LLM's folder (LMA runs with a HF tokenizer)
    WORKDIR/frozen/        the parameters that do not train, written once (LMA runs)
    WORKDIR/checkpoints/   the trained parameters, optimizer state and data position at each saved step

`load_model` builds a run's model from these alone: the CTD run and Hugging Face folders an LMA run came from
may be moved or deleted afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
from flax import nnx

from liteframe_jax.assembly.specs import SPEC_VERSION, StudentSpec, VideoLLMSpec, spec_from_dict
from liteframe_jax.core import checkpoint, paths, run_dir
from liteframe_jax.core.run_dir import RunDir
from liteframe_jax.core.tree import flatten, pure_dict, unflatten

SPEC_FILE = run_dir.SPEC
TOKENIZER_DIR = run_dir.TOKENIZER  # spec.json names the copy relative to the run folder
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")


def write_spec(workdir: str, spec):
    """Write spec.json (process 0); an LMA spec's tokenizer folder is copied into the run first, and the spec
    written names the copy. Returns the spec as written."""
    if isinstance(spec, VideoLLMSpec) and spec.tokenizer != "bytes" and paths.isabs(spec.tokenizer):
        if jax.process_index() == 0:
            target = RunDir(workdir).tokenizer
            paths.makedirs(target)
            copied = [name for name in TOKENIZER_FILES if paths.isfile(os.path.join(spec.tokenizer, name))]
            if "tokenizer.json" not in copied:
                raise FileNotFoundError(f"tokenizer folder {spec.tokenizer!r} has no tokenizer.json")
            for name in copied:
                paths.copy(os.path.join(spec.tokenizer, name), os.path.join(target, name))
        spec = dataclasses.replace(spec, tokenizer=TOKENIZER_DIR)
    if jax.process_index() == 0:
        paths.makedirs(workdir)
        text = json.dumps({"version": SPEC_VERSION, **spec.to_dict()}, indent=2)
        paths.write_text(RunDir(workdir).spec, text)
    return spec


def _legacy_student_spec(workdir: str) -> StudentSpec | None:
    """CTD runs written before spec.json: their student from config.json (the CTD config's own fields)."""
    cfg = RunDir(workdir).read_config()
    if cfg is None or cfg.get("trainer") != "ctd":
        return None
    return StudentSpec.from_config(cfg["student"], cfg["data"]["num_frames"], cfg["data"])


def read_spec(workdir: str, want: type | None = None):
    """The spec of the model a run folder holds; `want` (StudentSpec or VideoLLMSpec) checks its kind."""
    if not paths.isdir(workdir):
        raise FileNotFoundError(f"{workdir!r} does not exist (a run folder was expected)")
    run = RunDir(workdir)
    saved = run.read_spec()
    if saved is not None:
        spec = spec_from_dict(saved)
    else:
        spec = _legacy_student_spec(workdir)
        if spec is None:
            if not paths.isfile(run.config):
                raise FileNotFoundError(f"{workdir!r} is not a run folder of liteframe_jax (no {SPEC_FILE}, no "
                                        f"{run_dir.CONFIG})")
            raise FileNotFoundError(
                f"{workdir!r} has no {SPEC_FILE}: it was written before run folders held their whole model. Run its "
                "training command once more with the same --workdir (its sources must still exist): it resumes, "
                f"writes {SPEC_FILE} and frozen/, and from then on the folder stands alone")
    if want is not None and not isinstance(spec, want):
        raise ValueError(f"{workdir!r} holds a {spec.kind!r} model, not a {want.kind!r}")
    return spec


def _complete(workdir: str, step: int, flat: dict, abstract_params: dict) -> dict:
    """`flat` restricted to the model's parameters, checked: every one present, every shape as the spec builds."""
    frozen = checkpoint.frozen_dir(workdir)
    want = flatten(abstract_params)
    missing = sorted(set(want) - set(flat))
    if missing:
        hint = ("" if checkpoint.has_tree(frozen) else
                " The run has no frozen/ folder: run its training command once more with the same --workdir "
                "(its sources must still exist) to write it.")
        raise ValueError(f"{workdir!r} step {step}: {len(missing)} of the model's parameters are in neither the "
                         f"checkpoint nor frozen/, e.g. {missing[:3]}.{hint}")
    for path, leaf in want.items():
        if tuple(np.shape(flat[path])) != tuple(leaf.shape):
            raise ValueError(f"{workdir!r}: parameter {path!r} has shape {np.shape(flat[path])} in the run folder, "
                             f"but its spec.json builds {tuple(leaf.shape)}")
    return unflatten({k: flat[k] for k in want})


def load_weights(workdir: str, abstract_params: dict, step: int | None = None, *,
                 lazy: bool = False) -> tuple[dict, int]:
    """The whole model's parameters (host numpy, nested like `abstract_params`): the frozen parts from
    frozen/, the trained ones from the checkpoint at `step` (default: the latest). `lazy`: `LazyArray`s that
    are read when used, a layer at a time (for a pass over a model larger than the memory to spare)."""
    frozen = checkpoint.frozen_dir(workdir)
    if lazy:
        flat, step = checkpoint.lazy_params(workdir, step=step)
        if checkpoint.has_tree(frozen):
            flat.update(checkpoint.LazyTree(frozen).leaves())
    else:
        trained, step = checkpoint.restore_params(workdir, step=step)
        flat = flatten(trained)
        if checkpoint.has_tree(frozen):
            flat.update(flatten(checkpoint.read_tree(frozen)))
    return _complete(workdir, step, flat, abstract_params), step


def spec_image_size(spec) -> int:
    return (spec.encoder if isinstance(spec, VideoLLMSpec) else spec).image_size


def load_model(workdir: str, *, step: int | None = None, want: type | None = None, lazy: bool = False,
               image_size: int | None = None, **build):
    """(spec, tokenizer or None, graphdef, params, step) of the model a run folder holds (`want`: its spec
    class, checked); `lazy`: parameters read when used (`load_weights`); `image_size`: the encoder on frames
    of another size than it was trained on (its position table resampled); `build`: dtype, attn_impl,
    mlp_kernel (how it runs, not what it computes)."""
    spec = read_spec(workdir, want)
    if image_size and image_size != spec_image_size(spec):
        spec = spec.at_image_size(image_size)
    tokenizer = None
    if isinstance(spec, VideoLLMSpec):
        tokenizer = spec.load_tokenizer(workdir)
        make = lambda: spec.build(rngs=nnx.Rngs(0), video_token_id=tokenizer.video_token_id, **build)
    else:
        make = lambda: spec.build(rngs=nnx.Rngs(0), **build)
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    params, step = load_weights(workdir, pure_dict(abstract), step, lazy=lazy)
    return spec, tokenizer, graphdef, params, step
