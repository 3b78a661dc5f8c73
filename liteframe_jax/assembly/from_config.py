"""The Video LLM an LMA config asks for: its spec, its tokenizer and where its pretrained parts come from.

A config names its parts by where they are (a CTD run folder, a Hugging Face folder, or `random` on purpose);
this file turns that into a `VideoLLMSpec` once, at a run's first start. From then on the run folder keeps the
spec (assembly/run_folder.py), and nothing reads the config's sources again. It sits beside specs.py rather
than in it because a CTD run's student is read through run_folder.py, which imports specs.py.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_collections

from liteframe_jax.assembly import run_folder
from liteframe_jax.assembly.specs import InternVitSpec, PooledTowerSpec, StudentSpec, VideoLLMSpec
from liteframe_jax.assembly.teacher import build_teacher
from liteframe_jax.convert.qwen2 import config_from_hf, text_config
from liteframe_jax.core import paths
from liteframe_jax.core.log import log
from liteframe_jax.core.run_dir import RunDir
from liteframe_jax.data.tokenizer import load_tokenizer
from liteframe_jax.models.internvit import InternVisionTower
from liteframe_jax.models.qwen2 import LoraConfig, Qwen2Config
from liteframe_jax.models.video_llm import ProjectorConfig


def video_llm(config) -> tuple[VideoLLMSpec, object, dict]:
    """(VideoLLMSpec, tokenizer, sources): the encoder from a CTD run (or an InternVL folder, or random), the
    LLM from a Hugging Face folder (or random); `sources` says where pretrained weights come from (`student`,
    `internvl`, `llm`) and, for people, `description`."""
    encoder, sources = _encoder(config)
    l = config.llm
    tokenizer_source = config.tokenizer or (l.init if l.init and l.init != "random" else None)
    if not tokenizer_source:
        raise ValueError("tokenizer is not set: 'bytes' (demo) or a Hugging Face folder with tokenizer.json")
    tokenizer_source = tokenizer_source if tokenizer_source == "bytes" else paths.resolve(tokenizer_source)
    tokenizer = load_tokenizer(tokenizer_source, config.video_token)
    if l.init == "random":
        arch = l.arch.to_dict()
        llm = Qwen2Config(**{**arch, "vocab_size": arch.get("vocab_size") or tokenizer.vocab_size})
        log(f"[lma] RANDOMLY INITIALISED LLM (llm.init=random: {llm.num_layers} layers of width {llm.hidden_size})")
    elif l.init:
        llm = config_from_hf(text_config(l.init))
        sources["llm"] = l.init
    else:
        raise ValueError("llm.init is not set: a Hugging Face Qwen2 folder (--config.llm.init=...) or 'random'")
    p = config.projector
    spec = VideoLLMSpec(
        encoder=encoder, projector=None if p.kind == "none" else ProjectorConfig(p.kind, p.hidden, p.act, p.norm),
        llm=llm, lora=LoraConfig(rank=l.lora.rank, alpha=l.lora.alpha, targets=l.lora.targets) if l.lora.rank else None,
        tokenizer=tokenizer_source, video_token=config.video_token, num_frames=int(config.data.num_frames),
        separators=config.data.separators, system_prompt=config.data.system_prompt)
    spec.check_tokenizer(tokenizer)
    return spec, tokenizer, sources


def _encoder(config) -> tuple:
    """(the encoder's spec, the sources it brings)."""
    e = config.encoder
    if e.kind == "student":
        init = config.student.init
        if init == "demo_ctd":
            raise ValueError("student.init='demo_ctd' is resolved by the jobs table (python -m liteframe_jax.main);"
                             " give a CTD run folder here")
        if init == "random":
            encoder = StudentSpec.from_config(config.student.arch, config.student.num_frames, config.data)
            return encoder, {"description": "RANDOMLY INITIALISED student"}
        if init:
            return run_folder.read_spec(init, StudentSpec), {"student": init,
                                                             "description": f"student from CTD run {init}"}
        raise ValueError("student.init is not set: a CTD run folder, 'demo_ctd' or 'random' on purpose")
    if e.kind == "teacher":
        return posthoc_encoder(config.student.init)
    if e.kind == "internvl":
        if not e.init:
            raise ValueError("encoder.init is not set: a whole Hugging Face InternVL folder")
        encoder = VideoLLMSpec.internvl(e.init).encoder
        encoder = dataclasses.replace(encoder, pixel_mean=tuple(config.data.pixel_mean),
                                      pixel_std=tuple(config.data.pixel_std))
        return encoder, {"internvl": e.init, "description": f"InternVL3 vision tower from {e.init}"}
    raise ValueError(f"encoder.kind={e.kind!r}: choose 'student', 'teacher' (the post-hoc baseline) or 'internvl'")


def ctd_teacher(ctd_run: str, dtype=jnp.float32):
    """(the teacher tower of CTD run `ctd_run`, as its config builds it; that config as a dict)."""
    if not ctd_run or ctd_run in ("random", "demo_ctd"):
        raise ValueError("encoder.kind=teacher reads the teacher and compression of a CTD run: set student.init to "
                         "that run's folder (or 'demo_ctd')")
    cfg = RunDir(ctd_run).read_config()
    if cfg is None or cfg.get("trainer") != "ctd":
        raise ValueError(f"{ctd_run!r} is not a CTD run folder (no CTD config.json): the post-hoc baseline takes "
                         "its teacher and compression from one")
    tower, _ = build_teacher(ml_collections.ConfigDict(cfg["teacher"]), dtype, None)
    if not isinstance(tower, InternVisionTower):
        raise ValueError(f"the teacher of {ctd_run!r} is a {type(tower).__name__}; the post-hoc baseline is built "
                         "for InternViT teachers")
    return tower, cfg


def posthoc_spec(tower: InternVisionTower, cfg: dict) -> PooledTowerSpec:
    """The post-hoc baseline's encoder: a CTD run's teacher (`tower`, of its config `cfg`) on every frame and
    the run's compression after it, with the token layout of the run's student (the same projector and LLM
    then fit either)."""
    comp = cfg["compression"]
    return PooledTowerSpec(
        InternVitSpec(tower.vit.cfg, tower.head_cfg, tower.feature_layer,  # the frames normalised as CTD's were
                      tuple(cfg["data"]["pixel_mean"]), tuple(cfg["data"]["pixel_std"])),
        output=cfg["teacher"]["output"], clip_frames=int(cfg["data"]["num_frames"]), window=tuple(comp["window"]),
        method=comp.get("method", "wap"), weighting=comp["weighting"], sigma=float(comp["sigma"]))


def posthoc_encoder(ctd_run: str) -> tuple[PooledTowerSpec, dict]:
    """(the post-hoc baseline's encoder spec for CTD run `ctd_run`, the sources it brings)."""
    encoder = posthoc_spec(*ctd_teacher(ctd_run))
    return encoder, {"teacher": ctd_run, "description": f"the teacher of CTD run {ctd_run}, its tokens compressed "
                                                        f"post hoc ({encoder.method} {encoder.window})"}
