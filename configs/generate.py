"""Answer a question about a video with a trained LMA run:

    python -m liteframe_jax.main --config=configs/generate.py --config.run=runs/lma \\
        --config.video=clip.mp4 --config.question="Which way does the shape move?"

temperature 0 is greedy decoding; > 0 samples (optionally from the top_k tokens).
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.trainer = "generate"
    c.run = config_dict.placeholder(str)
    c.video = config_dict.placeholder(str)
    c.question = config_dict.placeholder(str)
    c.max_new_tokens = 64
    c.temperature = 0.0
    c.top_k = 0
    c.seed = 0
    c.decoder = "auto"  # 'pyav' (CPU) | 'nvdec' (the GPU's video engines: PyNvVideoCodec) | 'auto'
    # True: each sampled frame moved to its nearest keyframe, only keyframes decoded (faster, other frames)
    c.keyframes_only = False
    return c
