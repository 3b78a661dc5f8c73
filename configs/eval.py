"""Benchmark evaluation of a Video LLM: `--config=configs/eval.py:NAME` with NAME one of
videomme, mlvu, longvideobench, demo, needle.

    python -m liteframe_jax.main --config=configs/eval.py:videomme --workdir=runs/eval_vmme \\
        --config.model.run=runs/lma1 --config.data.root=/data/Video-MME
    python -m liteframe_jax.main --config=configs/eval.py:demo --config.model.run=runs/lma_demo --workdir=runs/eval_demo
    python -m liteframe_jax.main --config=configs/eval.py:needle --config.model.run=runs/lma_needle \\
        --workdir=runs/eval_needle --config.needle.frames=16,128 --config.needle.minutes=1,10,30

`needle` (eval/needle.py) generates long videos with a needle (a coloured square shown for a few frames) at
each depth into `data.root` (default MODEL_RUN/needle_test) on first use, scores them at each of
`needle.frames` and draws the accuracy heat map (frames x depths) and accuracy against frames.

The model is an LMA run (`model.run`) or the InternVL3 baseline from a whole Hugging Face folder
(`model.internvl`, frames per question `model.internvl_frames`). `model.mlp_kernel=pallas` runs the encoder's
fc1 + GELU as one kernel on Hopper GPUs in bfloat16 (the same function, faster; default: the run's own
choice, `xla` for the baseline). Answers are written as they come
(WORKDIR/results.jsonl): running the same command again resumes where it stopped; a resume with another
model, step, protocol or setting is refused with what differs.

`protocol`: `lmms_eval` (lmms-eval 0.7.3's task prompts and answer reading, the default), `lmms_eval_v0.7.1`
(the same prompts, answers read as lmms-eval did up to v0.7.1), `lmms_eval_w_subtitle` (Video-MME with the
release's subtitles, as lmms-eval's videomme_w_subtitle task), `official_interleaved` / `lmms_eval_interleaved`
(LongVideoBench with its subtitles between the clips, as its authors' loader / lmms-eval's longvideobench_val_i),
`official` (the benchmark authors' scripts; MLVU's videochat2/choice_bench.py) or `official_generic` (MLVU's
multiple_choice_evaluation/choice_bench.py);
liteframe_jax/eval/prompts.py holds them, results.json their hash, the code each reproduces and the lmms-eval
version it follows. `model.internvl_prompt`: the InternVL3 baseline asked as InternVL's `model.chat` asks
(`chat`, its system message; the default) or as the `-hf` processor does (`hf`, no system turn).
`frames`: a frame sweep (eval/sweep.py), e.g. `--config.frames=64,128,256,512,1024` for an LMA run or
`16,32,48,64` for the baseline: each count scored in WORKDIR/frames_N/, its time to first token on this device
timed (decode, encode, prefill; `latency_runs`), the table in WORKDIR/sweep.json and sweep.md and accuracy
against time to first token drawn in WORKDIR/frontier.png (`frontier_with`: other sweeps' workdirs drawn
beside it). Empty (the default): one count, the run's own or `model.internvl_frames`.
Every device of the process answers (`devices`: 0 all, N the first N; `batch_size` questions a device per
call), and every process of a multi-process run (launch/local_multiprocess.sh, `--coordinator_address` ...)
answers its share of the questions into WORKDIR/shards/, merged into results.jsonl at the end.
`preprocess.sampling` / `preprocess.resize`: which frames and which resize filter; empty means the model's
own: `uniform` + `bilinear` for an LMA run (as it trained), `internvl` + `bicubic` for the InternVL3
baseline (InternVL's reference video loader).
"""

import ml_collections
from ml_collections import config_dict

MAX_NEW_TOKENS = {"videomme": 16, "mlvu": 16, "longvideobench": 32, "demo": 8, "needle": 8}


def get_config(arg=None):
    bench = arg or "demo"
    if bench not in MAX_NEW_TOKENS:
        raise ValueError(f"unknown benchmark {bench!r}; choose one of {sorted(MAX_NEW_TOKENS)}")
    c = ml_collections.ConfigDict()
    c.trainer = "eval"
    c.benchmark = bench
    # lmms_eval | lmms_eval_v0.7.1 | lmms_eval_w_subtitle (Video-MME) | official | official_generic (MLVU)
    c.protocol = "lmms_eval"
    c.seed = 0  # LongVideoBench's random fallback when no letter parses
    # internvl_prompt: how the InternVL3 baseline is asked: `chat` (InternVL's model.chat: its template's
    # system message before the frames) or `hf` (the -hf processor's chat template: no system turn)
    c.model = ml_collections.ConfigDict(dict(run=config_dict.placeholder(str), internvl=config_dict.placeholder(str),
                                             internvl_frames=64, internvl_prompt="chat",
                                             mlp_kernel=config_dict.placeholder(str)))
    c.preprocess = ml_collections.ConfigDict(dict(sampling=config_dict.placeholder(str),  # uniform | internvl
                                                  resize=config_dict.placeholder(str),  # bilinear | bicubic
                                                  # frames of another size than the run's encoder was trained
                                                  # at (its position table resampled; other token counts)
                                                  image_size=config_dict.placeholder(int),
                                                  # pyav (CPU) | nvdec (the GPU's video engines) | auto; the
                                                  # decoders' frames differ slightly, so scores name theirs
                                                  decoder="pyav",
                                                  # True: sampled frames moved to their nearest keyframes
                                                  # (only keyframes decoded); scores record it
                                                  keyframes_only=False))
    c.data = ml_collections.ConfigDict(dict(root=config_dict.placeholder(str),
                                            annotation=config_dict.placeholder(str)))
    c.frames = ()  # a frame sweep's counts, e.g. --config.frames=64,128,256 (empty: one count)
    c.latency_runs = 3  # a sweep's timed requests per count (the median), after one that compiles
    c.frontier_with = ""  # other sweeps' workdirs, comma-separated, drawn beside this one in frontier.png
    c.devices = 0  # this process's devices that answer: 0 all, N the first N
    c.batch_size = 8  # questions a device per answering call
    c.decode_workers = 8
    c.max_new_tokens = MAX_NEW_TOKENS[bench]
    c.parse_failure_threshold = 0.05
    c.max_questions = 0  # 0: all
    if bench == "needle":  # eval/needle.py: the generated needle set, scored at each frame count
        # one-minute videos at 4 fps (240 frames), a needle of 6 frames (1.5 s) at ten depths: 8 uniform frames
        # land on 3 of the ten needles, 64 on every one
        c.needle = ml_collections.ConfigDict(dict(frames=(8, 16, 32, 64), minutes=(1.0,),
                                                  depths=tuple(round(0.05 + 0.1 * i, 2) for i in range(10)),
                                                  per_cell=4, fps=4, size=64, needle_frames=6, seed=0))
    return c
