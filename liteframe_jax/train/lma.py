"""The LMA task on the shared skeleton: adapt an LLM (and projector, optionally the student or LoRA adapters)
to the student's compressed visual tokens, with the next-token loss on answer tokens only.

The model is a VideoLLM with three named parts, `encoder/`, `projector/` and `llm/`; `train.trainable`
(regexes over parameter paths) picks what trains. Pretrained parts (a CTD run's student, a Hugging Face
Qwen2 folder) are loaded at every start, so frozen parts never need to be checkpointed.
"""

from __future__ import annotations

import json
import os
import string

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from liteframe_jax.convert import mapping
from liteframe_jax.data import conversations, pipeline, qa_demo
from liteframe_jax.data.tokenizer import load_tokenizer
from liteframe_jax.eval.extraction import letters
from liteframe_jax.models.generate import generate
from liteframe_jax.models.internvit import InternVisionTower
from liteframe_jax.models.layers import pure_dict
from liteframe_jax.models.qwen2 import LoraConfig, Qwen2, Qwen2Config
from liteframe_jax.models.student import LiteFrameStudent, StudentConfig
from liteframe_jax.models.video_llm import Projector, ProjectorConfig, VideoLLM
from liteframe_jax.train import checkpoint, metrics as metrics_lib
from liteframe_jax.train.ctd import compute_dtype, normalise
from liteframe_jax.train.loop import Task

PROMPT_WIDTH_STEP = 64  # generation prompts are left-padded to a multiple of this many tokens

TRAINABLE_PRESETS = {
    "projector": [r"^projector/"],
    "projector+student": [r"^projector/", r"^encoder/"],
    "projector+llm": [r"^projector/", r"^llm/"],
    "projector+lora": [r"^projector/", r"/lora_[ab]$"],
    "projector+student+lora": [r"^projector/", r"^encoder/", r"/lora_[ab]$"],
    "full": [r".*"],
}


def trainable_patterns(spec) -> list[str]:
    """A preset name or a list of regexes."""
    if isinstance(spec, str):
        if spec not in TRAINABLE_PRESETS:
            raise ValueError(f"train.trainable={spec!r}: choose one of {sorted(TRAINABLE_PRESETS)} or a regex list")
        return TRAINABLE_PRESETS[spec]
    return [str(p) for p in spec]


def read_ctd_config(workdir: str) -> dict:
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"student.init: {workdir!r} is not a CTD run folder (no config.json)")
    with open(path) as f:
        cfg = json.load(f)
    if cfg.get("trainer") != "ctd":
        raise ValueError(f"student.init: {workdir!r} holds a {cfg.get('trainer')!r} run, not a CTD run")
    return cfg


def normalise_answer(text: str) -> str:
    return text.strip().lower().strip(string.punctuation + " ").strip()


def score_answer(row, answer: str) -> dict:
    """A held-out row's answer, right or wrong: an open-ended answer must match the gold text (case and
    punctuation aside); a lettered one (`format` 'mc') is read by the rule the benchmark harness uses for the
    same questions (eval/extraction.py `letters`), so both report the same figure."""
    gold, fmt, n = row.turns[-1][1], row.get("format", "open"), row.get("num_options")
    correct = (letters(answer, n) == gold) if fmt == "mc" else normalise_answer(answer) == normalise_answer(gold)
    return {"id": row.id, "task_type": row.get("task_type", "all"), "format": fmt,
            "question": row.turns[-2][1].replace(conversations.VIDEO_MARKER, "").strip(), "gold": gold,
            "answer": answer, "correct": bool(correct), "chance": 1.0 / n if n else float("nan")}


def held_out_metrics(results: list[dict]) -> dict:
    """Accuracy (and chance) overall and per task type; for a set holding both open-ended and lettered
    questions, each format on its own too (`accuracy_mc`, `accuracy_mc_colour`, ...)."""
    def add(prefix, rs):
        metrics[f"accuracy{prefix}"] = float(np.mean([r["correct"] for r in rs]))
        chance = [r["chance"] for r in rs if not np.isnan(r["chance"])]
        if chance:
            metrics[f"chance{prefix}"] = float(np.mean(chance))
        for task in sorted({r["task_type"] for r in rs}):
            metrics[f"accuracy{prefix}_{task}"] = float(np.mean([r["correct"] for r in rs if r["task_type"] == task]))

    metrics = {}
    add("", results)
    formats = sorted({r["format"] for r in results})
    if len(formats) > 1:
        for fmt in formats:
            add(f"_{fmt}", [r for r in results if r["format"] == fmt])
    return metrics


class LMATask(Task):
    name = "lma"

    def __init__(self, config, mesh, workdir: str, with_data: bool = True):
        super().__init__(config, mesh)
        self.workdir = workdir
        self.dtype = compute_dtype(config.dtype)
        self.tokenizer = load_tokenizer(self._tokenizer_spec(), config.video_token)
        self._setup_encoder(config)
        self._setup_llm(config)
        self.frames_per_video = int(config.data.num_frames)
        clips = self.frames_per_video // self.clip_frames
        if self.frames_per_video % self.clip_frames:
            raise ValueError(f"data.num_frames={self.frames_per_video} is not a multiple of the encoder's "
                             f"{self.clip_frames}-frame clips")
        self.builder = conversations.PromptBuilder(
            self.tokenizer, visual_groups=clips * self.groups_per_clip, tokens_per_group=self.tokens_per_group,
            separators=config.data.separators, max_length=int(config.data.max_length),
            system_prompt=config.data.system_prompt)
        metrics_lib.log(f"[lma] {self.frames_per_video} frames -> {self.builder.visual_groups * self.tokens_per_group}"
                        f" visual tokens ({self.encoder_description})")
        self.train_index, self.eval_index = self._data(config.data) if with_data else (None, None)
        if config.batch_size % jax.process_count():
            raise ValueError(f"batch_size {config.batch_size} is not divisible by {jax.process_count()} processes")
        self.local_batch = config.batch_size // jax.process_count()
        self.samples: list[dict] = []

    # --- construction ---
    def _tokenizer_spec(self) -> str:
        spec = self.config.tokenizer
        if spec:
            return spec
        if self.config.llm.init and self.config.llm.init != "random":
            return self.config.llm.init
        raise ValueError("tokenizer is not set: 'bytes' (demo) or a Hugging Face folder with tokenizer.json")

    def _setup_encoder(self, config):
        e = config.encoder
        self.student_source = None
        if e.kind == "student":
            init = config.student.init
            if init == "demo_ctd":
                init = self._run_demo_ctd()
            if init and init != "random":
                ctd = read_ctd_config(init)
                student, data = dict(ctd["student"]), ctd["data"]
                self.student_source = init
                self.pixel_mean, self.pixel_std = tuple(data["pixel_mean"]), tuple(data["pixel_std"])
                num_frames = int(data["num_frames"])
                self.encoder_description = f"student from CTD run {init}"
            elif init == "random":
                student = config.student.arch.to_dict()
                num_frames = int(config.student.num_frames)
                self.pixel_mean, self.pixel_std = tuple(config.data.pixel_mean), tuple(config.data.pixel_std)
                self.encoder_description = "RANDOMLY INITIALISED student"
            else:
                raise ValueError("student.init is not set: a CTD run folder, 'demo_ctd' or 'random' on purpose")
            self.student_cfg = StudentConfig.from_dict({**student, "num_frames": num_frames})
            self.clip_frames = num_frames
            t, h, w = self.student_cfg.output_grid
            self.groups_per_clip, self.tokens_per_group = t, h * w
            self.encoder_width = self.student_cfg.out_dim
            self.image_size = self.student_cfg.image_size
        elif e.kind == "internvl":
            from liteframe_jax.convert import hf_folder
            from liteframe_jax.convert.internvl import head_config_from_hf, vit_config_from_hf
            if not e.init:
                raise ValueError("encoder.init is not set: a whole Hugging Face InternVL folder")
            hf = hf_folder.read_config(e.init)
            self.vit_cfg = vit_config_from_hf(hf["vision_config"])
            self.head_cfg, self.feature_layer = head_config_from_hf(hf)
            tower = InternVisionTower(self.vit_cfg, self.head_cfg, rngs=nnx.Rngs(0))
            h, w, self.encoder_width = nnx.eval_shape(lambda: tower).grid_shape("projector")
            self.clip_frames, self.groups_per_clip, self.tokens_per_group = 1, 1, h * w
            self.image_size = self.vit_cfg.image_size
            self.pixel_mean, self.pixel_std = tuple(config.data.pixel_mean), tuple(config.data.pixel_std)
            self.encoder_description = f"InternVL3 vision tower from {e.init}"
        else:
            raise ValueError(f"encoder.kind={e.kind!r}: choose 'student' or 'internvl'")

    def _run_demo_ctd(self) -> str:
        """The demo's own CTD run (in WORKDIR/ctd), trained first if it has no checkpoint yet."""
        from liteframe_jax.jobs import load_config_file, run
        ctd_dir = os.path.join(self.workdir, "ctd")
        if not checkpoint.has_checkpoint(ctd_dir):
            metrics_lib.log(f"[lma] student.init=demo_ctd: training the demo CTD student first in {ctd_dir}")
            ctd = load_config_file("ctd", "demo")
            ctd.total_steps = int(self.config.student.demo_ctd_steps)
            run(ctd, ctd_dir)
        return ctd_dir

    def _setup_llm(self, config):
        from liteframe_jax.convert.qwen2 import config_from_hf, text_config
        l = config.llm
        if l.init == "random":
            self.llm_cfg = Qwen2Config(**{**l.arch.to_dict(), "vocab_size": self.tokenizer.vocab_size})
            metrics_lib.log("[lma] RANDOMLY INITIALISED LLM (demo)")
        elif l.init:
            self.llm_cfg = config_from_hf(text_config(l.init))
        else:
            raise ValueError("llm.init is not set: a Hugging Face Qwen2 folder (--config.llm.init=...) or 'random'")
        if self.tokenizer.vocab_size > self.llm_cfg.vocab_size:
            raise ValueError(f"tokenizer has {self.tokenizer.vocab_size} tokens, the LLM only {self.llm_cfg.vocab_size}")
        self.lora = LoraConfig(rank=l.lora.rank, alpha=l.lora.alpha, targets=l.lora.targets) if l.lora.rank else None

    def _data(self, d):
        if d.train == "demo":
            train_path, eval_path = qa_demo.make_qa_set(os.path.join(self.workdir, "demo_qa"))
            root = os.path.join(self.workdir, "demo_qa")
        else:
            if not d.train:
                raise ValueError("data.train is not set: a LLaVA-Video style JSON/JSONL file, or 'demo'")
            train_path, eval_path, root = d.train, d.eval, d.video_root
        indices = []
        for name, path in (("train", train_path), ("held-out", eval_path)):
            if not path:
                indices.append(None)
                continue
            index = conversations.build_index(path, root, tuple(d.get("video_markers", conversations.VIDEO_MARKERS)))
            index.rows = self._fitting(index)
            metrics_lib.log(f"[lma] {name} data {path}: {index.report()}")
            indices.append(index)
        return indices

    def _fitting(self, index) -> list:
        """Rows whose tokenized conversation fits max_length (the others are refused and counted)."""
        kept = []
        for row in index.rows:
            try:
                self.builder.training_example(row.turns, [0.0] * self.builder.visual_groups)
                kept.append(row)
            except conversations.TooLong:
                index.too_long += 1
        if not kept:
            raise ValueError(f"every row is longer than data.max_length={self.builder.max_length}")
        return kept

    def _example(self, index) -> pipeline.QAExample:
        return pipeline.QAExample(self.builder, self.image_size, self.frames_per_video,
                                  {p: i.num_frames for p, i in index.infos.items()},
                                  {p: i.fps for p, i in index.infos.items()})

    # --- Task interface ---
    def build_model(self, rngs):
        # runs written before `encoder.mlp_kernel` kept the student's choice at the top level
        mlp_kernel = self.config.encoder.get("mlp_kernel") or self.config.get("student_mlp_kernel", "xla")
        if self.config.encoder.kind == "student":
            encoder = LiteFrameStudent(self.student_cfg, rngs=rngs, dtype=self.dtype,
                                       attn_impl=self.config.attention_impl, mlp_kernel=mlp_kernel, mesh=self.mesh)
        else:
            encoder = InternVisionTower(self.vit_cfg, self.head_cfg, rngs=rngs, feature_layer=self.feature_layer,
                                        dtype=self.dtype, attn_impl=self.config.attention_impl,
                                        mlp_kernel=mlp_kernel, mesh=self.mesh)
        p = self.config.projector
        projector = None if p.kind == "none" else Projector(
            self.encoder_width, self.llm_cfg.hidden_size, ProjectorConfig(p.kind, p.hidden, p.act, p.norm),
            rngs=rngs, dtype=self.dtype)
        if projector is None and self.encoder_width != self.llm_cfg.hidden_size:
            raise ValueError(f"projector.kind='none' but the encoder gives width {self.encoder_width} and the LLM "
                             f"takes {self.llm_cfg.hidden_size}")
        llm = Qwen2(self.llm_cfg, rngs=rngs, dtype=self.dtype, lora=self.lora, attn_impl=self.config.attention_impl,
                    remat=self.config.get("remat", "none"))
        return VideoLLM(encoder, llm, video_token_id=self.tokenizer.video_token_id, projector=projector)

    def trainable_patterns(self):
        return trainable_patterns(self.config.train.trainable)

    def pretrained_params(self, paths):
        out = {}
        if self.student_source:
            params, step = checkpoint.restore_params(self.student_source)
            out.update({f"encoder/{k}": v for k, v in mapping.flatten(params).items()})
            metrics_lib.log(f"[lma] student: {self.student_source} step {step}")
        if self.config.encoder.kind == "internvl":
            from liteframe_jax.convert.internvl import load_internvl
            tower = load_internvl(self.config.encoder.init)
            out.update({f"encoder/{k}": np.asarray(v) for k, v in mapping.flatten(pure_dict(nnx.state(tower))).items()})
        if self.config.llm.init not in ("random", None, ""):
            from liteframe_jax.convert.qwen2 import load_qwen2_params
            llm_shapes = mapping.unflatten({k[4:]: jax.ShapeDtypeStruct(s, jnp.float32)
                                            for k, s in paths.items() if k.startswith("llm/")})
            params = load_qwen2_params(self.config.llm.init, llm_shapes)
            out.update({f"llm/{k}": v for k, v in mapping.flatten(params).items()})
            metrics_lib.log(f"[lma] LLM: {self.config.llm.init}")
        return out

    def batch_spec(self):
        b, length = self.config.batch_size, max(self.config.data.buckets)
        s = self.image_size
        return {"frames": jax.ShapeDtypeStruct((b, self.frames_per_video, s, s, 3), jnp.uint8),
                "tokens": jax.ShapeDtypeStruct((b, length), jnp.int32),
                "loss_mask": jax.ShapeDtypeStruct((b, length), jnp.bool_),
                "valid": jax.ShapeDtypeStruct((b, length), jnp.bool_)}

    def train_dataset(self):
        d = self.config.data
        return pipeline.qa_train_dataset(
            self.train_index.rows, self._example(self.train_index), batch_size=self.local_batch,
            buckets=tuple(d.buckets), pad_id=self.tokenizer.pad_id, seed=self.config.seed,
            process_index=jax.process_index(), process_count=jax.process_count(), num_workers=d.num_workers,
            read_threads=d.read_threads)

    def frames_in(self, frames_uint8):
        """uint8 (B, T, S, S, 3) -> normalised; a long video becomes a batch of encoder clips."""
        x = normalise(frames_uint8, self.pixel_mean, self.pixel_std, self.dtype)
        b, t = x.shape[:2]
        return x.reshape(b * (t // self.clip_frames), self.clip_frames, *x.shape[2:]), b

    def visual_tokens(self, model: VideoLLM, frames_uint8):
        clips, b = self.frames_in(frames_uint8)
        tokens = model.visual_tokens(clips)
        return tokens.reshape(b, -1, tokens.shape[-1])

    def embeds(self, model: VideoLLM, tokens, frames_uint8):
        from liteframe_jax.models.video_llm import splice
        return splice(model.llm.embed_tokens(tokens), tokens, self.visual_tokens(model, frames_uint8),
                      model.video_token_id)

    def loss(self, model, batch, prepared, rng):
        tokens, valid = batch["tokens"], batch["valid"]
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        h, _ = model.llm.hidden(self.embeds(model, tokens, batch["frames"]), positions, valid)
        logits = model.llm.logits(h[:, :-1])
        targets, weights = tokens[:, 1:], batch["loss_mask"][:, 1:].astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, -1)
        nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
        count = jnp.maximum(weights.sum(), 1.0)
        correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        return (nll * weights).sum() / count, {"answer_token_accuracy": (correct * weights).sum() / count,
                                               "answer_tokens": weights.sum()}

    def answer_prompts(self, embed_fn, params, llm_graphdef, llm_params, prompts, frames, *, max_new_tokens: int,
                       temperature: float = 0.0, top_k: int = 0, seed: int = 0) -> list[str]:
        """Token-id prompts (each with its frames) -> decoded answers. Prompts are left-padded so every one
        ends at the same column; `embed_fn(params, ids, frames)` splices the visual tokens in."""
        # Widths rounded up to a multiple of PROMPT_WIDTH_STEP: the jitted embedding and generation compile
        # once per width, and benchmark prompts differ in length from batch to batch.
        width = -(-max(len(p) for p in prompts) // PROMPT_WIDTH_STEP) * PROMPT_WIDTH_STEP
        ids = np.full((len(prompts), width), self.tokenizer.pad_id, np.int32)
        valid = np.zeros((len(prompts), width), bool)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):], valid[i, width - len(p):] = p, True
        embeds = embed_fn(params, jnp.asarray(ids), jnp.asarray(np.stack(frames)))
        out, lengths = generate(llm_graphdef, llm_params, embeds, jnp.asarray(valid),
                                jnp.asarray(self.tokenizer.stop_ids), jax.random.key(seed),
                                max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                                pad_id=self.tokenizer.pad_id)
        out, lengths = np.asarray(out), np.asarray(lengths)
        stops = set(self.tokenizer.stop_ids)
        return [self.tokenizer.decode([t for t in out[i, :lengths[i]] if t not in stops]) for i in range(len(prompts))]

    def evaluate(self, graphdef, params, frozen):
        """Greedy answers to the held-out questions; accuracy overall and per task type, against chance."""
        if not self.eval_index:
            return {}
        model = nnx.merge(graphdef, params)
        llm_graphdef, llm_params = nnx.split(model.llm)
        if not hasattr(self, "_embed_fn"):
            self._embed_fn = jax.jit(lambda p, tok, fr: self.embeds(nnx.merge(graphdef, p), tok, fr))
        example = self._example(self.eval_index)
        rows, bs = self.eval_index.rows, self.config.eval_batch_size
        results = []
        for start in range(0, len(rows), bs):
            chunk = rows[start:start + bs]
            prompts, frames = [], []
            for row in chunk:
                idx, times = example.frame_plan(row)
                frames.append(pipeline.video.decode_frames(row.video, idx, self.image_size))
                prompts.append(self.builder.generation_prompt(row.turns, times))
            n = len(chunk)
            while len(prompts) < bs:  # fixed shapes: pad the last batch with copies
                prompts.append(prompts[-1])
                frames.append(frames[-1])
            answers = self.answer_prompts(self._embed_fn, params, llm_graphdef, llm_params, prompts, frames,
                                          max_new_tokens=int(self.config.generation.max_new_tokens))
            for row, answer in zip(chunk[:n], answers):
                results.append(score_answer(row, answer))
        self.samples = results
        return held_out_metrics(results)

    def summary(self, result) -> list[str]:
        lines = []
        if result.eval:
            e = result.eval
            formats = sorted({r["format"] for r in self.samples})
            for fmt in formats:
                key = f"_{fmt}" if len(formats) > 1 else ""
                n = sum(r["format"] == fmt for r in self.samples)
                chance = f" (chance {e['chance' + key]:.3f})" if "chance" + key in e else ""
                start = (f"; at the start {result.eval_at_start['accuracy' + key]:.3f}"
                         if result.eval_at_start else "")
                name = {"open": "open-ended", "mc": "multiple-choice"}.get(fmt, fmt)
                lines.append(f"held-out {name} answer accuracy: {e['accuracy' + key]:.3f}{chance}{start} over "
                             f"{n} questions")
                per_type = ", ".join(f"{k[len('accuracy' + key) + 1:]} {v:.2f}" for k, v in e.items()
                                     if k.startswith(f"accuracy{key}_"))
                if per_type:
                    lines.append(f"  by type: {per_type}")
            lines.append("sample answers:")
            for r in self.samples[:6]:
                lines.append(f"  [{r['task_type']}] {r['question']!r} -> {r['answer']!r} "
                             f"(gold {r['gold']!r}) {'ok' if r['correct'] else 'wrong'}")
        lines.append("next: ask a question about a video with\n  python -m liteframe_jax.main "
                     f"--config=configs/generate.py --config.run={result.workdir} "
                     "--config.video=/path/to/video.mp4 --config.question='What happens?'")
        return lines
