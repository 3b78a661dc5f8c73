"""The LMA task on the shared skeleton: adapt an LLM (and projector, optionally the student or LoRA adapters)
to the student's compressed visual tokens, with the next-token loss on answer tokens only.

The model is the Video LLM that a `VideoLLMSpec` builds, with three named parts, `encoder/`, `projector/` and
`llm/`; `train.trainable` (regexes over parameter paths) picks what trains. Pretrained parts (a CTD run's
student, a Hugging Face Qwen2 folder) are read at the first start; the run folder then keeps the spec, the
tokenizer and the frozen parts itself (assembly/run_folder.py), so it no longer needs its sources.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from liteframe_jax.assembly import from_config, run_folder
from liteframe_jax.assembly.answering import Answerer
from liteframe_jax.assembly.specs import VideoLLMSpec
from liteframe_jax.convert.internvl import load_internvl
from liteframe_jax.convert.qwen2 import load_qwen2_params
from liteframe_jax.core import checkpoint, paths, sharding
from liteframe_jax.core.dtypes import compute_dtype
from liteframe_jax.core.log import log
from liteframe_jax.core.run_dir import RunDir
from liteframe_jax.core.tree import flatten, pure_dict, unflatten
from liteframe_jax.data import bad_data, conversations, pipeline
from liteframe_jax.data import sources as data_sources
from liteframe_jax.eval import scoring
from liteframe_jax.models import context_parallel, kernel_choice
from liteframe_jax.train.task import Task
from liteframe_jax.train.video_index_of_run import index_videos_of_run

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


class LMATask(Task):
    name = "lma"

    def __init__(self, config, mesh, workdir: str, with_data: bool = True):
        super().__init__(config, mesh)
        self.workdir = workdir
        self.dtype = compute_dtype(config.dtype)
        encoder_trains = any(re.search(p, "encoder/head/kernel") for p in trainable_patterns(config.train.trainable))
        self.kernels, said = kernel_choice.resolve(config.kernels, self.dtype, tower_trains=encoder_trains,
                                                   device=mesh.devices.flat[0])
        for line in said:
            log(f"[lma] {line}")
        if paths.isfile(RunDir(workdir).spec):  # a resumed run: its own spec, no sources
            self.spec = run_folder.read_spec(workdir, VideoLLMSpec)
            self.tokenizer = self.spec.load_tokenizer(workdir)
            self.sources = {}
            log(f"[lma] the Video LLM of {RunDir(workdir).spec}")
        else:
            self.spec, self.tokenizer, self.sources = from_config.video_llm(config)
        self.max_answer_tokens = int(config.data.max_answer_tokens)
        if self.max_answer_tokens <= 0:
            raise ValueError("data.max_answer_tokens must be > 0: the loss computes logits at that many answer "
                             "positions per row")
        self.builder = self.spec.prompt_builder(self.tokenizer, max_length=int(config.data.max_length),
                                                max_answer_tokens=self.max_answer_tokens)
        log(f"[lma] {self.spec.num_frames} frames -> {self.spec.num_visual_tokens} visual tokens "
            f"({self.sources.get('description', 'from the run folder')})")
        self.train_index, self.eval_index = self._data(config.data) if with_data else (None, None)
        if self.train_index is not None:
            rows = self.train_index.rows
            self.data_watch = bad_data.MidRun(lambda i: rows[i].video, config.data.max_bad_in_a_row, "rows")
        self.part, self.parts = sharding.row_group(mesh)  # which of the batch's rows this process reads
        if config.batch_size % self.parts:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {self.parts} processes that "
                             "read different rows")
        self.local_batch = config.batch_size // self.parts
        self.samples: list[dict] = []
        self._answerer = None

    def _data(self, d):
        """The training and held-out row indices of the conversation files `data` names (data/sources.py)."""
        train_path, eval_path, root = data_sources.qa_files(d, self.workdir)
        indices = []
        for name, path in (("train", train_path), ("held-out", eval_path)):
            if not path:
                indices.append(None)
                continue
            index = conversations.build_index(path, root, tuple(d.get("video_markers", conversations.VIDEO_MARKERS)),
                                              probe=lambda vids: index_videos_of_run(vids, d, self.workdir, "lma"))
            index.rows, index.token_lengths = self._fitting(index)
            log(f"[lma] {name} data {path}: {index.report()}")
            index.check_ceiling(path, float(d.max_bad_fraction))
            indices.append(index)
        return indices

    def _fitting(self, index) -> tuple[list, list[int]]:
        """(rows whose tokenized conversation fits max_length and max_answer_tokens, their token counts); the
        others are refused and counted. Rows are tokenized with the frame times training will give them, which
        the timestamp separators spell out."""
        kept, lengths = [], []
        example = self._example(index)
        for row in index.rows:
            try:
                tokens, _ = self.builder.training_example(row.turns, example.frame_plan(row)[1])
            except conversations.TooLong:
                index.too_long += 1
                continue
            kept.append(row)
            lengths.append(len(tokens))
        if not kept:
            raise ValueError(f"every row is longer than data.max_length={self.builder.max_length} or has more than "
                             f"data.max_answer_tokens={self.max_answer_tokens} answer tokens")
        return kept, lengths

    def _example(self, index) -> pipeline.QAExample:
        return pipeline.QAExample(self.builder, self.spec.encoder.image_size, self.spec.num_frames,
                                  {p: i.num_frames for p, i in index.infos.items()},
                                  {p: i.fps for p, i in index.infos.items()})

    # --- Task interface ---
    def build_model(self, rngs):
        k = self.kernels
        return self.spec.build(rngs=rngs, dtype=self.dtype, attn_impl=k["attention"], mlp_kernel=k["mlp"],
                               tail_kernel=k["block_tail"], mesh=self.mesh,
                               tower_attn_impl=kernel_choice.tower_attention_impl(k),
                               remat=self.config.get("remat", "none"),
                               scan_layers=bool(self.config.get("scan_layers", False)),
                               video_token_id=self.tokenizer.video_token_id)

    def trainable_patterns(self):
        return trainable_patterns(self.config.train.trainable)

    def frozen_dtype(self, path: str):
        # The LLM's matrices are cast to the compute dtype at every use (its Dense layers, embedding lookup and
        # logits), so frozen ones kept in bfloat16 give the same step in half their memory and gather traffic.
        if jnp.dtype(self.dtype) == jnp.bfloat16 and path.startswith("llm/") and \
                path.rsplit("/", 1)[-1] in ("kernel", "embed", "lm_head"):
            return jnp.bfloat16
        return None

    def pretrained_params(self, paths):
        out = {}
        if "student" in self.sources:
            params, step = checkpoint.restore_params(self.sources["student"])
            out.update({f"encoder/{k}": v for k, v in flatten(params).items()})
            log(f"[lma] student: {self.sources['student']} step {step}")
        if "teacher" in self.sources:  # the post-hoc baseline: the CTD run's teacher, frozen
            tower, _ = from_config.ctd_teacher(self.sources["teacher"])
            out.update({f"encoder/tower/{k}": np.asarray(v) for k, v in flatten(pure_dict(nnx.state(tower))).items()})
            log(f"[lma] encoder: the teacher of CTD run {self.sources['teacher']}")
        if "internvl" in self.sources:
            tower = load_internvl(self.sources["internvl"])
            out.update({f"encoder/{k}": np.asarray(v) for k, v in flatten(pure_dict(nnx.state(tower))).items()})
        if "llm" in self.sources:
            llm_shapes = unflatten({k[4:]: jax.ShapeDtypeStruct(s, jnp.float32)
                                    for k, s in paths.items() if k.startswith("llm/")})
            params = load_qwen2_params(self.sources["llm"], llm_shapes)
            out.update({f"llm/{k}": v for k, v in flatten(params).items()})
            log(f"[lma] LLM: {self.sources['llm']}")
        return out

    def batch_spec(self):
        b, length = self.config.batch_size, max(self.config.data.buckets)
        s = self.spec.encoder.image_size
        return {"frames": jax.ShapeDtypeStruct((b, self.spec.num_frames, s, s, 3), jnp.uint8),
                "tokens": jax.ShapeDtypeStruct((b, length), jnp.int32),
                "loss_mask": jax.ShapeDtypeStruct((b, length), jnp.bool_),
                "valid": jax.ShapeDtypeStruct((b, length), jnp.bool_)}

    def over_context(self) -> tuple[str, ...]:
        """With `mesh.context` > 1 the frames come split over 'context' by whole encoder clips, where those
        divide: no chip holds every frame of a row (or of the batch, where the batch axes are 1)."""
        c = sharding.context_size(self.mesh)
        return ("frames",) if c > 1 and self.spec.clips % c == 0 else ()

    def train_dataset(self, start: int = 0):
        d = self.config.data
        return pipeline.qa_train_dataset(
            self.train_index.rows, self.train_index.token_lengths, self._example(self.train_index),
            batch_size=self.local_batch, buckets=tuple(d.buckets), pad_id=self.tokenizer.pad_id, seed=self.config.seed,
            process_index=self.part, process_count=self.parts, num_workers=d.num_workers,
            read_threads=d.read_threads, start=start, watch=self.data_watch)

    def describe_examples(self, indices) -> list[dict]:
        rows = self.train_index.rows
        return [{"index": int(i), "row": rows[i].row, "id": rows[i].id, "video": rows[i].video} for i in indices]

    def loss(self, model, batch, prepared, rng):
        """Next-token loss on the answer tokens. The LM head runs only at the (at most `max_answer_tokens`)
        answer positions of each row, gathered from the hidden states: over a whole 8k-token sequence and a
        151k vocabulary, full logits would dominate the step's memory and time."""
        tokens, valid, frames = batch["tokens"], batch["valid"], batch["frames"]
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        # mesh.context > 1: the LLM's activations split along the rows' tokens (models/context_parallel.py), and
        # the frames by whole encoder clips where those divide (`over_context`), so the encoder's work is split too
        split = lambda x: context_parallel.split_sequence(x, self.mesh)
        frames = split(frames) if self.over_context() else frames
        embeds = split(self.spec.embeds(model, tokens, frames, self.dtype,
                                        int(self.config.get("encoder_clips_per_pass", 0))))
        h, _ = model.llm.hidden(embeds, split(positions), split(valid))
        # position i predicts token i + 1; the rows' answer positions first, in order (a stable sort)
        weights = batch["loss_mask"][:, 1:]
        k = min(self.max_answer_tokens, t - 1)
        where = jnp.argsort(~weights, axis=1, stable=True)[:, :k]
        h = context_parallel.take_positions(split(h), where, self.mesh)  # positions < t - 1: h[:, :-1]'s
        targets = jnp.take_along_axis(tokens[:, 1:], where, axis=1)
        weights = jnp.take_along_axis(weights, where, axis=1).astype(jnp.float32)
        logits = model.llm.logits(h).astype(jnp.float32)
        logp = jax.nn.log_softmax(logits, -1)
        nll = -jnp.take_along_axis(logp, targets[..., None], -1)[..., 0]
        count = jnp.maximum(weights.sum(), 1.0)
        correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        return (nll * weights).sum() / count, {"answer_token_accuracy": (correct * weights).sum() / count,
                                               "answer_tokens": weights.sum()}

    def evaluate(self, graphdef, params, frozen):
        """Greedy answers to the held-out questions; accuracy overall and per task type, against chance."""
        if not self.eval_index:
            return {}
        if self._answerer is None:
            self._answerer = Answerer(self.spec, self.tokenizer, graphdef, self.dtype)
        example = self._example(self.eval_index)
        rows, bs = self.eval_index.rows, self.config.eval_batch_size
        results = []
        for start in range(0, len(rows), bs):
            chunk = rows[start:start + bs]
            prompts, frames = [], []
            for row in chunk:
                idx, times = example.frame_plan(row)
                frames.append(pipeline.video.decode_frames(row.video, idx, self.spec.encoder.image_size))
                prompts.append(self.builder.generation_prompt(row.turns, times))
            n = len(chunk)
            while len(prompts) < bs:  # fixed shapes: pad the last batch with copies
                prompts.append(prompts[-1])
                frames.append(frames[-1])
            answers = self._answerer(params, prompts, frames,
                                     max_new_tokens=int(self.config.generation.max_new_tokens))
            for row, answer in zip(chunk[:n], answers):
                results.append(scoring.score_held_out(row, answer))
        self.samples = results
        return scoring.held_out_metrics(results)

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
        if self.data_watch is not None and self.data_watch.tally.total:
            lines.append(f"mid-run: {self.data_watch.tally.summary()} (their video failed to decode; trained as rows "
                         "without loss)")
        lines.append("next: ask a question about a video with\n  python -m liteframe_jax.main "
                     f"--config=configs/generate.py --config.run={result.workdir} "
                     "--config.video=/path/to/video.mp4 --config.question='What happens?'")
        return lines
