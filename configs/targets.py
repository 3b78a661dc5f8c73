"""The teacher-target cache: CTD's teacher + compression once over the training clips, for `--config.targets`.

  python -m liteframe_jax.main --config=configs/targets.py:paper --workdir=/fast_disk/targets_paper \
      --config.ctd.teacher.init=/ckpt/InternVL3-8B-hf --config.ctd.data.videos=/data/videos
  python -m liteframe_jax.main --config=configs/ctd.py:paper --config.targets=cache:/fast_disk/targets_paper ...

The preset is the CTD preset whose targets are cached (`demo`, `paper`, `paper_tubelet2`, `siglip`); every CTD
field is under `ctd.` and must match the training run's (the cache's manifest is compared at its start).
"""

import ml_collections

from liteframe_jax.core.configs import load_config_file


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.trainer = "targets"
    c.preset = arg or "demo"
    c.ctd = load_config_file("ctd", arg)
    c.batch_size = 8 if c.preset == "demo" else 256  # clips per teacher call, over this process's devices
    c.shard_size = 256  # clips per ArrayRecord shard: the unit of resumption after a kill
    c.read_threads = 2 if c.preset == "demo" else 16  # decoding threads feeding the teacher
    c.mesh = c.ctd.mesh
    return c
