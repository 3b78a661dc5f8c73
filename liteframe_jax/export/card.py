"""The exported folder's README.md: a model card from the run's own records (config.json, metrics.jsonl,
spec.json), with the figures the run measured and how to load what was written. The records are read through
`RunDir`, so a run in a bucket gets its card too."""

from __future__ import annotations

from liteframe_jax.assembly.specs import InternVitSpec, StudentSpec, VideoLLMSpec
from liteframe_jax.core.run_dir import RunDir


def _get(cfg: dict, dotted: str, default="-"):
    node = cfg
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return default if node is None else node


def logged_evaluation(run_dir: str, step: int) -> tuple[int, dict] | None:
    """The last held-out evaluation the run logged at or before `step`: (its step, {metric: value}); a last line
    cut by a kill is left out."""
    best = None
    for row in RunDir(run_dir).read_metrics():
        evals = {k[len("eval_"):]: v for k, v in row.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        if evals and row.get("step", 0) <= step and (best is None or row["step"] >= best[0]):
            best = (row["step"], evals)
    return best


def _training_lines(cfg: dict, spec) -> list[str]:
    trainer = cfg.get("trainer", "-")
    lines = [f"| trainer | {trainer} (preset `{_get(cfg, 'preset')}`) |",
             f"| steps x batch | {_get(cfg, 'total_steps')} x {_get(cfg, 'batch_size')} |",
             f"| optimizer | AdamW, lr {_get(cfg, 'optimizer.lr')}, weight decay {_get(cfg, 'optimizer.weight_decay')} |"]
    if trainer == "ctd":
        teacher = _get(cfg, "teacher.init")
        lines += [f"| teacher | `{teacher}`{' (randomly initialised: the demo)' if teacher == 'random' else ''}, "
                  f"output `{_get(cfg, 'teacher.output')}` |",
                  f"| compression | `{_get(cfg, 'compression.method', 'wap')}`, window "
                  f"{tuple(_get(cfg, 'compression.window', ()))}, weighting `{_get(cfg, 'compression.weighting')}` |",
                  f"| data | `{_get(cfg, 'data.videos')}`, {_get(cfg, 'data.num_frames')} frames per clip, "
                  f"stride {_get(cfg, 'data.frame_stride')} |"]
    elif trainer == "lma":
        lines += [f"| student | `{_get(cfg, 'student.init')}` |", f"| LLM | `{_get(cfg, 'llm.init')}` |",
                  f"| what trained | `{_get(cfg, 'train.trainable')}` |",
                  f"| data | `{_get(cfg, 'data.train')}` (held out: `{_get(cfg, 'data.eval')}`) |"]
    if isinstance(spec, VideoLLMSpec):
        lines.append(f"| frames per video | {spec.num_frames} ({spec.clips} clip{'s' if spec.clips > 1 else ''} of "
                     f"{spec.encoder.clip_frames}), "
                     f"{spec.num_visual_tokens} visual tokens, separators `{spec.separators}` |")
    return lines


def write(path: str, *, run_dir: str, step: int, spec, dtype: str, lora: str | None, files: dict[str, list[str]],
          loading: list[str] | None = None):
    """`loading`: the lines of the loading example, where they are not the export's own classes."""
    cfg = RunDir(run_dir).read_config() or {}
    student = spec if isinstance(spec, StudentSpec) else spec.encoder
    is_llm = isinstance(spec, VideoLLMSpec)
    front = ["---", "library_name: transformers" if is_llm else "library_name: pytorch",
             "pipeline_tag: video-text-to-text" if is_llm else "pipeline_tag: feature-extraction",
             "tags: [liteframe, video, compressed-token-distillation]", "---", ""]
    title = "LiteFrame Video LLM" if is_llm else "LiteFrame student video encoder"
    lines = front + [f"# {title}", "",
                     f"Exported from the run `{run_dir}` at step {step}, weights in {dtype}.", ""]
    lines += _encoder_lines(student)
    lines += ["## Training", "", "| | |", "|---|---|"] + _training_lines(cfg, spec) + [""]
    evaluation = logged_evaluation(run_dir, step)
    lines += ["## Measured by the run", ""]
    if evaluation is None:
        lines += ["The run logged no held-out evaluation up to this step.", ""]
    else:
        at, metrics = evaluation
        shown = {k: v for k, v in metrics.items() if k.count("_") <= 1}
        lines += [f"Held-out evaluation at step {at}:", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" for k, v in sorted(shown.items())] + [""]
    lines += ["## Files", ""] + [f"- `{folder}/`: {', '.join(names)}" for folder, names in files.items()] + [""]
    if loading is not None:
        lines += ["## Loading", "", "```python"] + loading + ["```", ""]
    else:
        lines += _our_loading(spec, student.arch, lora)
    if is_llm:
        lines += [f"Frames: {spec.num_frames} per video, the middle frame of each of {spec.num_frames} equal "
                  f"segments of the whole video, resized (bilinear) to {student.image_size}x{student.image_size}, "
                  "as in training.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def _encoder_lines(encoder) -> list[str]:
    t, n, width = encoder.token_grid
    mean, std = tuple(encoder.pixel_mean), tuple(encoder.pixel_std)
    if isinstance(encoder, InternVitSpec):
        v, f = encoder.vit, encoder.head.factor
        return ["## The encoder", "",
                f"InternVL3's InternViT ({v.num_layers} layers of width {v.hidden_size}, patch {v.patch_size}) on each "
                f"{v.image_size}x{v.image_size} frame, then its {f}x{f} pixel-unshuffle and MLP projector: {n} tokens "
                f"of width {width} per frame. Pixels: 0..1 normalised with mean {mean}, std {std}.", ""]
    a = encoder.arch
    return ["## The encoder", "",
            f"{a.num_frames}-frame clips of {a.image_size}x{a.image_size} px in; {t * n} tokens of width {width} per "
            f"clip out ({t} temporal groups of {n}, in (t, h, w) order). Tubelet {tuple(a.patch_size)}, width "
            f"{a.width}, {sum(s[0] for s in a.stages)} blocks in {len(a.stages)} stages. Pixels: 0..1 normalised "
            f"with mean {mean}, std {std}.", ""]


def _our_loading(spec, a, lora: str | None) -> list[str]:
    is_llm = isinstance(spec, VideoLLMSpec)
    lines = ["## Loading", "", "```python", "from liteframe_jax.pytorch import LiteFrameEncoder",
             'encoder = LiteFrameEncoder.from_pretrained("student")',
             f"tokens = encoder.encode_video(frames)  # uint8 (T, {a.image_size}, {a.image_size}, 3), T a multiple "
             f"of {a.num_frames}"]
    if is_llm:
        lines += ["", "from liteframe_jax.pytorch import LiteFrameVideoLLM",
                  'model = LiteFrameVideoLLM.from_pretrained(".")',
                  f'print(model.generate(frames, "What happens in the video?"))  # uint8 ({spec.num_frames}, '
                  f"{a.image_size}, {a.image_size}, 3)", "", "from transformers import AutoModelForCausalLM",
                  'llm = AutoModelForCausalLM.from_pretrained("llm")  # the LLM alone, no custom code']
        if lora == "adapter":
            lines += ['from peft import PeftModel', 'llm = PeftModel.from_pretrained(llm, "llm_lora")']
    return lines + ["```", ""]
