"""Language Model Adaptation (LMA): adapt an LLM to the student's compressed visual tokens.

Presets (`--config=configs/lma.py:NAME`):
  demo   (default) the demo's own CTD student (trained first into WORKDIR/ctd, or --config.student.init=RUN),
         a tiny random Qwen2 with a byte-level tokenizer, and a generated video QA set (colour, direction,
         count, order); the LLM (random) and the projector train, the student stays frozen. CPU, minutes.
  needle the `demo` models on the needle test's short videos (data/needle.py): a coloured square shows for
         1-12 of 32 frames, "what colour was it?"; `configs/eval.py:needle` then scores it on longer videos.
  paper  a CTD `paper` student (--config.student.init=RUN), Qwen2.5-7B-Instruct
         (--config.llm.init=FOLDER, its tokenizer too), LLaVA-Video style data (--config.data.train=FILE),
         512 frames = 64 student clips x 128 tokens; the projector, the student and LoRA adapters (rank 64)
         on every LLM projection train (`--config.train.trainable=full` trains the whole LLM instead).

`--config.encoder.kind=teacher` on any preset trains the post-hoc baseline instead: the CTD run's teacher on
every frame, its tokens compressed as the run's targets are, in the student's place (the same tokens, the
same projector and LLM, the teacher's cost per frame).
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from liteframe_jax.core import defaults
from liteframe_jax.models.qwen2 import Qwen2Config
from liteframe_jax.models.student import StudentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def get_config(arg=None):
    preset = arg or "demo"
    c = ml_collections.ConfigDict()
    c.trainer = "lma"
    c.preset = preset
    c.seed = 0
    c.dtype = "float32"
    # kernels.attention / .mlp (the encoder's, student or InternViT) / .block_tail (a student encoder's; unset:
    # as .mlp): core/defaults.py, 'auto' by default. The fused MLP is inference-only: 'auto' picks it for a
    # frozen encoder only.
    c.kernels = defaults.kernels()
    # the encoder in training: 0 encodes a row's clips at once; N > 0 N clips a pass, each pass recomputed in the
    # backward pass, so the step keeps one pass's encoder activations (what fits a 512-frame row on a chip)
    c.encoder_clips_per_pass = 0
    c.remat = "none"  # LLM layers in training: none | full | dots (liteframe_jax/models/layers.py REMAT_POLICIES)
    # with remat: the LLM's layers as a loop (lax.scan) rather than unrolled, so the backward pass keeps one
    # hidden state per layer (less memory, weights not fetched ahead of their layer)
    c.scan_layers = False

    # The demo's colour and order questions are learnt first; direction and count, which need the shapes'
    # positions compared across tokens, take several hundred steps more (docs/METHOD.md, "The demo").
    c.total_steps = 600
    c.batch_size = 16
    c.grad_accum_steps = 1
    # 'table': remat / grad_accum_steps / mesh.fsdp for the chip kind from train/sizing.py's table; 'auto': then
    # compile and move down its ladder until the step fits the chip; 'off': as set here
    c.sizing = "table"
    c.log_every = 20
    c.eval_every = 300
    c.eval_at_start = True
    c.eval_batch_size = 16
    c.checkpoint_every = 300
    c.keep_checkpoints = 2
    c.async_checkpointing = True
    c.nan_patience = 20
    c.check_memory = True  # stop before step 1 if the compiled step needs more device memory than there is
    c.resume_from = config_dict.placeholder(str)
    # the checkpoint to resume from (this workdir's, else resume_from's); unset: the latest. Later ones of this
    # workdir are moved to checkpoints_set_aside/ (e.g. past a damaged checkpoint)
    c.resume_step = config_dict.placeholder(int)
    c.init_from = config_dict.placeholder(str)

    c.mesh = defaults.mesh()
    c.sharding_rules = defaults.SHARDING_RULES
    c.optimizer = ml_collections.ConfigDict(dict(
        lr=2e-3, warmup_fraction=0.05, warmup_steps=-1, decay_steps=-1, end_lr_fraction=0.0, b1=0.9, b2=0.98,
        eps=1e-8, weight_decay=0.0, grad_clip=1.0))

    # What trains: a preset name (projector | projector+llm | projector+student | projector+lora |
    # projector+student+lora | full) or a list of regexes over parameter paths such as
    # 'llm/layer_3/attn/q/dense/kernel'.
    # The demo trains the random LLM and the projector on a frozen CTD student: trained from the first step
    # on the gradients of a random LLM, the student loses the spatial detail that the direction questions
    # need (docs/METHOD.md, "The demo").
    c.train = ml_collections.ConfigDict(dict(trainable="projector+llm"))

    # 'student' (a CTD run's, student.init); 'teacher': the post-hoc baseline, student.init's CTD run's teacher on
    # every frame and its tokens compressed as that run's targets are (the student's token layout at the
    # teacher's cost); 'internvl': InternVL3's tower from a Hugging Face folder (init)
    c.encoder = ml_collections.ConfigDict(dict(kind="student", init=config_dict.placeholder(str)))
    c.student = ml_collections.ConfigDict()
    c.student.init = "demo_ctd"  # a CTD run folder | 'demo_ctd' | 'random'
    c.student.demo_ctd_steps = 200
    c.student.num_frames = 8  # only for init='random'
    arch = dataclasses.asdict(StudentConfig.preset("demo"))
    del arch["num_frames"]
    c.student.arch = ml_collections.ConfigDict(arch)
    c.projector = ml_collections.ConfigDict(dict(kind="mlp", hidden=0, act="gelu", norm=True))

    c.llm = ml_collections.ConfigDict()
    c.llm.init = "random"  # 'random' (demo) or a Hugging Face Qwen2 folder
    # for init='random'; vocab_size 0: the tokenizer's
    c.llm.arch = ml_collections.ConfigDict({**dataclasses.asdict(Qwen2Config.preset("demo")), "vocab_size": 0})
    c.llm.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets="q|k|v|o|gate|up|down"))
    c.tokenizer = "bytes"  # 'bytes' or a folder with tokenizer.json; empty: llm.init's folder
    c.video_token = "<|video_pad|>"

    c.data = ml_collections.ConfigDict()
    c.data.train = "demo"  # LLaVA-Video style JSON/JSONL, or 'demo'
    c.data.eval = config_dict.placeholder(str)
    c.data.video_root = config_dict.placeholder(str)  # default: the annotation file's folder
    # Where the frames go in a human turn; LLaVA-Video-178K rows write LLaVA's <image>.
    c.data.video_markers = ("<video>", "<image>")
    c.data.num_frames = 8  # per video, uniform over its whole length; a multiple of the student's clip
    c.data.separators = "none"  # 'none' | 'frame' | 'timestamp' | 'internvl' between groups of visual tokens
    c.data.system_prompt = config_dict.placeholder(str)
    c.data.max_length = 256  # longer rows are refused (skipped and counted)
    # The loss computes logits only at each row's answer tokens, at most this many (rows with more are refused
    # and counted as too long, never cut).
    c.data.max_answer_tokens = 32
    c.data.buckets = (160, 256)  # batches are right-padded to the smallest bucket that fits
    c.data.num_workers = 0
    c.data.read_threads = 4
    c.data.video_index = ""  # as in CTD: '' WORKDIR/video_index, a shared folder, or 'off'
    # as in CTD: more than this fraction of an annotation file's rows unusable stops the run at start-up, as do
    # this many rows in a row whose video fails to decode mid-run (0: never)
    c.data.max_bad_fraction = 0.01
    c.data.max_bad_in_a_row = 100
    c.data.probe_threads = 8
    c.data.pixel_mean = IMAGENET_MEAN  # for a 'random' student; a CTD student brings its own
    c.data.pixel_std = IMAGENET_STD

    c.generation = ml_collections.ConfigDict(dict(max_new_tokens=8))

    if preset == "demo":
        pass
    elif preset == "needle":
        # the demo's student and LLM on needle questions (data/needle.py): 32-frame videos in which a coloured
        # square shows for 1-2 frames; `configs/eval.py:needle` then asks it about longer videos at 8..32 frames.
        # Fewer videos than thousands are learnt by heart (the held-out rows stay near chance).
        c.data.train = "needle_demo"
        c.data.needle_videos = 3000
        # how long the needle shows, in frames: long ones teach the colour, short ones where to look
        c.data.needle_frames = (1, 12)
        c.data.num_frames = 32
        c.data.max_length = 512  # 256 visual tokens and the lettered question in bytes
        c.data.buckets = (384, 512)
        c.data.num_workers = 2
        c.total_steps = 400
        c.eval_every = 200
        c.checkpoint_every = 200
    elif preset == "paper":
        c.student.init = config_dict.placeholder(str)
        c.llm.init = config_dict.placeholder(str)
        # the shapes of what student.init and llm.init bring (a CTD `paper` student, Qwen2.5-7B): read only where
        # they are 'random' (a --compile_only run, a bench)
        paper = dataclasses.asdict(StudentConfig.preset("paper"))
        del paper["num_frames"]
        c.student.arch = ml_collections.ConfigDict(paper)
        c.llm.arch = ml_collections.ConfigDict(dataclasses.asdict(Qwen2Config.preset("qwen2.5-7b")))
        c.tokenizer = ""
        c.train.trainable = "projector+student+lora"
        c.llm.lora.rank = 64
        c.llm.lora.alpha = 128.0
        c.data.max_answer_tokens = 1024
        c.data.train = config_dict.placeholder(str)
        c.data.num_frames = 512
        c.data.separators = "timestamp"
        c.data.max_length = 12_288
        c.data.buckets = (10_240, 12_288)
        c.data.num_workers = 12
        c.dtype = "bfloat16"
        c.batch_size = 32
        c.eval_batch_size = 8
        c.total_steps = 10_000
        c.log_every = 50
        c.eval_every = 1_000
        c.eval_at_start = False
        c.checkpoint_every = 500
        c.optimizer.lr = 2e-5
        c.optimizer.weight_decay = 0.0
        c.generation.max_new_tokens = 64
    else:
        raise ValueError(f"unknown lma preset {preset!r}; choose 'demo', 'needle' or 'paper'")
    return c
