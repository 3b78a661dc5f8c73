"""A CTD or LMA run folder out to PyTorch and Hugging Face formats, on one host, without the training mesh:

    OUT/student/     config.json + model.safetensors       -> pytorch.encoder.LiteFrameEncoder
    OUT/projector/   config.json + model.safetensors       (LMA runs)
    OUT/llm/         a Hugging Face Qwen2ForCausalLM folder: config.json, generation_config.json, the
                     tokenizer files and chat template, model.safetensors (sharded above `max_shard_size`)
    OUT/llm_lora/    a PEFT LoRA adapter (with lora='adapter'; llm/ then holds the weights without it)
    OUT/config.json  the Video LLM's layout (video token, frames, visual tokens, separators) -> LiteFrameVideoLLM
    OUT/hf/          the Video LLM as one Hugging Face folder with its own code (export/hf_folder.py): transformers'
                     AutoModelForImageTextToText and AutoProcessor load it with trust_remote_code=True
    OUT/README.md    the model card

Everything is written into a temporary folder beside OUT and renamed into place at the end, so a failure
leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import numpy as np

from liteframe_jax.assembly import run_folder
from liteframe_jax.assembly.specs import InternVitSpec, StudentSpec, VideoLLMSpec
from liteframe_jax.core import paths
from liteframe_jax.core.tree import flatten
from liteframe_jax.data.tokenizer import CHATML_TEMPLATE, ByteTokenizer
from liteframe_jax.export import card, hf_folder, internvl, qwen2, student
from liteframe_jax.export.safetensors_out import DTYPES, Tensor, parse_size, write_model
from liteframe_jax.export.tokenizer import copy_tokenizer, write_byte_tokenizer
from liteframe_jax.models.video_llm import PROJECTOR_NORM_EPS

FORMAT_VERSION = 1
VIDEO_LLM_TYPE = "liteframe_video_llm"  # pytorch/video_llm.py reads this


class ExportError(ValueError):
    """Input that export refuses, with what is wrong."""


@dataclasses.dataclass
class Exported:
    out: str
    step: int
    kind: str
    files: dict[str, list[str]]
    weight_bytes: int


def _check_out(out: str, run_dir: str, overwrite: bool) -> None:
    if os.path.abspath(out) == run_dir or os.path.abspath(out).startswith(run_dir + os.sep):
        raise ExportError(f"--out {out!r} lies inside the run folder; choose a folder outside it")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"--out {out!r} exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ExportError(f"--out {out!r} is not empty; pass --overwrite to replace it")


def _check_spec(spec, run_dir: str, lora: str) -> None:
    if isinstance(spec, VideoLLMSpec) and not isinstance(spec.encoder, (StudentSpec, InternVitSpec)):
        raise ExportError(f"{run_dir!r}: its Video LLM's encoder is a {spec.encoder.kind!r} model; export writes "
                          "a LiteFrame student or InternVL3's tower")
    if isinstance(spec, VideoLLMSpec) and isinstance(spec.encoder, InternVitSpec):
        if lora != "merge":
            raise ExportError(f"--lora={lora}: an InternVL3 run leaves as one 'internvl' folder, its LoRA merged "
                              "(--lora=merge)")
        try:
            internvl.check_spec(spec)
        except internvl.InternVLExportError as e:
            raise ExportError(f"{run_dir!r}: {e}") from None


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)


def _projector_tensors(flat: dict, dtype: str, prefix: str = "") -> list[Tensor]:
    out = []
    for name in sorted(flat):
        module, leaf = name.rsplit("/", 1)
        value = flat[name]
        if leaf == "kernel":
            out.append(Tensor(f"{prefix}{module}.weight", tuple(value.shape[::-1]), dtype,
                              lambda v=value: np.asarray(v).T))
        else:  # LayerNorm scale / bias, Dense bias
            out.append(Tensor(f"{prefix}{module}.{'weight' if leaf == 'scale' else 'bias'}", tuple(value.shape), dtype,
                              lambda v=value: v))
    return out


def _write_student(folder: str, spec: StudentSpec, flat: dict, dtype: str, max_bytes: int) -> tuple[list[str], int]:
    os.makedirs(folder)
    tensors = student.tensors(spec, flat, dtype)
    _write_json(os.path.join(folder, "config.json"), student.config(spec, dtype))
    return ["config.json"] + write_model(folder, tensors, max_shard_bytes=max_bytes), sum(t.nbytes for t in tensors)


def _write_llm(folder: str, spec: VideoLLMSpec, tokenizer, run_dir: str, flat: dict, dtype: str, lora: str,
               max_bytes: int) -> tuple[list[str], int]:
    os.makedirs(folder)
    bos, eos, pad = tokenizer.bos_id, list(tokenizer.stop_ids), tokenizer.pad_id
    if isinstance(tokenizer, ByteTokenizer):
        write_byte_tokenizer(folder, tokenizer, max_length=spec.llm.max_position_embeddings)
        names = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    else:
        names = copy_tokenizer(os.path.join(run_dir, spec.tokenizer), folder, run_folder.TOKENIZER_FILES)
    _write_json(os.path.join(folder, "config.json"), qwen2.config(spec.llm, dtype=dtype, bos_id=bos, eos_ids=eos,
                                                                 pad_id=pad))
    _write_json(os.path.join(folder, "generation_config.json"), qwen2.generation_config(bos_id=bos, eos_ids=eos,
                                                                                        pad_id=pad))
    tensors = qwen2.tensors(spec.llm, flat, spec.lora, dtype, lora_mode=lora)
    names = ["config.json", "generation_config.json"] + names + write_model(folder, tensors, max_shard_bytes=max_bytes)
    return names, sum(t.nbytes for t in tensors)


def _video_llm_config(spec: VideoLLMSpec, tokenizer, lora_folder: str | None) -> dict:
    return {"model_type": VIDEO_LLM_TYPE, "format_version": FORMAT_VERSION, "encoder": "student",
            "projector": "projector" if spec.projector is not None else None, "llm": "llm",
            "lora_adapter": lora_folder, "video_token": spec.video_token, "num_frames": spec.num_frames,
            "clip_frames": spec.encoder.clip_frames, "visual_groups": spec.visual_groups,
            "tokens_per_group": spec.tokens_per_group, "num_visual_tokens": spec.num_visual_tokens,
            "separators": spec.separators, "system_prompt": spec.system_prompt,
            "stop_token_ids": list(tokenizer.stop_ids), "pad_token_id": tokenizer.pad_id,
            "frame_sampling": "uniform", "resize": "bilinear", "image_size": spec.encoder.image_size}


def _projector_config(spec: VideoLLMSpec, dtype: str) -> dict:
    return {"model_type": "liteframe_projector", **dataclasses.asdict(spec.projector),
            "in_features": spec.encoder.token_grid[2], "out_features": spec.llm.hidden_size,
            "norm_eps": PROJECTOR_NORM_EPS, "dtype": dtype}


def _write_projector(folder: str, spec: VideoLLMSpec, flat: dict, dtype: str, max_bytes: int) -> tuple[list[str], int]:
    os.makedirs(folder)
    _write_json(os.path.join(folder, "config.json"), _projector_config(spec, dtype))
    tensors = _projector_tensors(flat, dtype)
    return ["config.json"] + write_model(folder, tensors, max_shard_bytes=max_bytes), sum(t.nbytes for t in tensors)


def _write_adapter(folder: str, spec: VideoLLMSpec, llm_flat: dict, dtype: str, max_bytes: int) -> tuple[list[str], int]:
    os.makedirs(folder)
    _write_json(os.path.join(folder, "adapter_config.json"), qwen2.adapter_config(llm_flat, spec.lora, base_model="../llm"))
    tensors = qwen2.adapter_tensors(spec.llm, llm_flat, dtype)
    names = write_model(folder, tensors, max_shard_bytes=max_bytes, base="adapter_model")
    return ["adapter_config.json"] + names, sum(t.nbytes for t in tensors)


def _write_video_llm(tmp: str, spec: VideoLLMSpec, tokenizer, run_dir: str, params: dict, dtype: str, lora: str,
                     max_bytes: int) -> tuple[dict[str, list[str]], int]:
    """student/, projector/, llm/, llm_lora/ (lora='adapter') and config.json under `tmp`: (files, weight bytes)."""
    files, sizes = {}, []
    files["student"], n = _write_student(os.path.join(tmp, "student"), spec.encoder, flatten(params["encoder"]),
                                         dtype, max_bytes)
    sizes.append(n)
    if spec.projector is not None:
        files["projector"], n = _write_projector(os.path.join(tmp, "projector"), spec, flatten(params["projector"]),
                                                 dtype, max_bytes)
        sizes.append(n)
    llm_flat = flatten(params["llm"])
    files["llm"], n = _write_llm(os.path.join(tmp, "llm"), spec, tokenizer, run_dir, llm_flat, dtype, lora, max_bytes)
    sizes.append(n)
    lora_folder = "llm_lora" if lora == "adapter" else None
    if lora_folder:
        files[lora_folder], n = _write_adapter(os.path.join(tmp, lora_folder), spec, llm_flat, dtype, max_bytes)
        sizes.append(n)
    layout = _video_llm_config(spec, tokenizer, lora_folder)
    _write_json(os.path.join(tmp, "config.json"), layout)
    files["hf"] = _write_hf(os.path.join(tmp, "hf"), spec, tokenizer, params, layout, dtype, lora, max_bytes)
    return files, sum(sizes)


def _write_hf(folder: str, spec: VideoLLMSpec, tokenizer, params: dict, layout: dict, dtype: str, lora: str,
              max_bytes: int) -> list[str]:
    """hf/: the whole model as one Hugging Face folder (export/hf_folder.py), beside the parts; it reuses llm/'s
    weight files when llm/ holds them merged."""
    llm_dir = os.path.join(os.path.dirname(folder), "llm")
    vision = student.tensors(spec.encoder, flatten(params["encoder"]), dtype, prefix="vision_tower.")
    if spec.projector is not None:
        vision += _projector_tensors(flatten(params["projector"]), dtype, prefix="multi_modal_projector.")
    merged = None if lora == "merge" else qwen2.tensors(spec.llm, flatten(params["llm"]), spec.lora, dtype)
    with open(os.path.join(llm_dir, "config.json")) as f:
        llm_config = json.load(f)
    return hf_folder.write(
        folder, llm_dir=llm_dir, llm_config=llm_config, student_config=student.config(spec.encoder, dtype),
        projector_config=_projector_config(spec, dtype) if spec.projector is not None else None,
        vision_tensors=vision, llm_tensors=merged, layout={**layout, "video_token_id": tokenizer.video_token_id},
        default_template=tokenizer.chat_template or CHATML_TEMPLATE, max_bytes=max_bytes)


def _write_internvl(folder: str, spec: VideoLLMSpec, tokenizer, run_dir: str, params: dict, dtype: str,
                    max_bytes: int) -> tuple[dict[str, list[str]], int]:
    """hf/: an InternVL3 run as the `internvl` folder transformers loads (export/internvl.py)."""
    try:
        internvl.check_tokenizer(tokenizer)
    except internvl.InternVLExportError as e:
        raise ExportError(f"{run_dir!r}: {e}") from None
    os.makedirs(folder)
    bos, eos, pad = tokenizer.bos_id, list(tokenizer.stop_ids), tokenizer.pad_id
    written = {"config.json": internvl.config(spec, tokenizer, dtype),
               "generation_config.json": qwen2.generation_config(bos_id=bos, eos_ids=eos, pad_id=pad),
               **internvl.processor_files(spec)}
    for name, data in written.items():
        _write_json(os.path.join(folder, name), data)
    names = list(written) + copy_tokenizer(os.path.join(run_dir, spec.tokenizer), folder, run_folder.TOKENIZER_FILES)
    tensors = internvl.tensors(spec, flatten(params["encoder"]), flatten(params["llm"]), dtype)
    names += write_model(folder, tensors, max_shard_bytes=max_bytes)
    return {"hf": names}, sum(t.nbytes for t in tensors)


def export_run(run_dir: str, out: str, *, step: int | None = None, dtype: str = "float32", lora: str = "merge",
               overwrite: bool = False, max_shard_size: str | int = "5GB") -> Exported:
    """Export the run folder `run_dir` at `step` (default: its latest checkpoint) into `out`."""
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r}: choose one of {sorted(DTYPES)}")
    if lora not in qwen2.LORA_MODES:
        raise ExportError(f"--lora {lora!r}: choose one of {qwen2.LORA_MODES}")
    max_bytes = parse_size(max_shard_size)
    run_dir = paths.resolve(run_dir)  # a bucket's URL stays a URL (os.path.abspath would make it ./gs:/...)
    out = os.path.abspath(out)
    spec = run_folder.read_spec(run_dir)
    _check_spec(spec, run_dir, lora)
    _check_out(out, run_dir, overwrite)
    if lora == "adapter" and not (isinstance(spec, VideoLLMSpec) and spec.lora is not None and spec.lora.rank > 0):
        raise ExportError(f"--lora=adapter: the run {run_dir!r} trains no LoRA adapters")
    # read as written, a layer at a time: host memory holds about one layer, not the model
    spec, tokenizer, _, params, step = run_folder.load_model(run_dir, step=step, lazy=True)

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{os.path.basename(out)}.export-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        if isinstance(spec, StudentSpec):
            kind = "student"
            names, total = _write_student(os.path.join(tmp, "student"), spec, flatten(params), dtype, max_bytes)
            files = {"student": names}
        elif isinstance(spec.encoder, InternVitSpec):
            kind = "internvl"
            files, total = _write_internvl(os.path.join(tmp, "hf"), spec, tokenizer, run_dir, params, dtype,
                                           max_bytes)
        else:
            kind = "video_llm"
            files, total = _write_video_llm(tmp, spec, tokenizer, run_dir, params, dtype, lora, max_bytes)
        loading = internvl.loading_lines if kind == "internvl" else hf_folder.loading_lines
        card.write(os.path.join(tmp, "README.md"), run_dir=run_dir, step=step, spec=spec, dtype=dtype,
                   lora=lora if kind != "student" else None, files=files,
                   loading=loading("hf") if kind == "internvl" else None)
        if kind in ("video_llm", "internvl"):
            card.write(os.path.join(tmp, "hf", "README.md"), run_dir=run_dir, step=step, spec=spec, dtype=dtype,
                       lora=None, files={".": files["hf"]}, loading=loading())
            files["hf"].append("README.md")
        _write_json(os.path.join(tmp, "export.json"), {"format_version": FORMAT_VERSION, "run": run_dir, "step": step,
                                                      "dtype": dtype, "lora": lora, "kind": kind})
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Exported(out, step, kind, files, total)


def _move_into_place(tmp: str, out: str) -> None:
    if os.path.isdir(out):
        old = f"{tmp}.old"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out)
