"""The CTD task on the shared skeleton: teacher (frozen) -> WAP compression -> target; student -> prediction.

The teacher runs inside the jitted step but outside the gradient (`Task.prepare`), so it never reaches the
optimizer, and its parameters are a separate, non-donated argument that is never checkpointed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from liteframe_jax.assembly.specs import StudentSpec
from liteframe_jax.assembly.teacher import build_teacher
from liteframe_jax.core import sharding
from liteframe_jax.core.dtypes import compute_dtype
from liteframe_jax.core.log import log
from liteframe_jax.core.tree import pure_dict
from liteframe_jax.data import bad_data, clip_cache
from liteframe_jax.data import clips as clips_lib
from liteframe_jax.data import pipeline, sources, target_cache
from liteframe_jax.models import compression, kernel_choice
from liteframe_jax.models.internvit import InternVisionTower
from liteframe_jax.models.pixels import normalise
from liteframe_jax.train import losses
from liteframe_jax.train.task import Task
from liteframe_jax.train.video_index_of_run import index_videos_of_run


class CTDTask(Task):
    name = "ctd"

    def __init__(self, config, mesh, workdir: str, with_data: bool = True, abstract: bool = False):
        """`with_data=False`: no videos are read (benches, compiling); `abstract=True`: the teacher is shapes
        only, never initialised, so its step can be compiled for devices this host does not have."""
        super().__init__(config, mesh)
        self.dtype = compute_dtype(config.dtype)
        # the teacher's MLP is frozen; the kernels are those of the devices the step is compiled for
        self.kernels, said = kernel_choice.resolve(config.kernels, self.dtype, device=mesh.devices.flat[0])
        for line in said:
            log(f"[ctd] {line}")
        self.attn_impl = attn_impl = kernel_choice.tower_attention_impl(self.kernels)  # teacher's and student's

        # Teacher first: it fixes the target grid that the student must match.
        make = lambda: build_teacher(config.teacher, self.dtype, attn_impl, self.kernels["mlp"], mesh)
        if abstract:
            description = None
            teacher = nnx.eval_shape(lambda: make()[0])
        else:
            teacher, description = make()
        if description:
            log(f"[ctd] {description}")
        self.teacher_graphdef, teacher_state = nnx.split(teacher)
        self.output = config.teacher.output
        h, w, channels = teacher.grid_shape(self.output)
        self.teacher_image_size = teacher.image_size
        self.teacher_vit_config = teacher.vit.cfg if isinstance(teacher, InternVisionTower) else teacher.cfg
        self.num_frames = int(config.data.num_frames)
        self.window = tuple(config.compression.window)
        self.target_grid = compression.output_grid((self.num_frames, h, w), self.window)
        self.target_shape = (*self.target_grid, channels)

        self.spec = StudentSpec.from_config(config.student, self.num_frames, config.data)
        self.student_cfg = self.spec.arch
        student_shape = (*self.student_cfg.output_grid, self.student_cfg.out_dim)
        if student_shape != self.target_shape:
            raise ValueError(
                f"student output grid (T, H, W, C) = {student_shape} does not match the compressed teacher grid "
                f"{self.target_shape} (teacher {self.num_frames}x{h}x{w}x{channels} '{self.output}' tokens, "
                f"window {self.window}). Change student.stages / student.patch_size / student.out_dim or "
                "compression.window.")
        method = config.compression.get("method", "wap")
        if method not in compression.METHODS:
            raise ValueError(f"compression.method {method!r} is not one of {compression.METHODS}")
        how = f"WAP {self.window} ({config.compression.weighting})" if method == "wap" else f"{method} {self.window}"
        log(f"[ctd] target: {self.num_frames} frames x {h}x{w} teacher tokens -> {how} -> {self.target_grid} grid = "
            f"{int(np.prod(self.target_grid))} tokens of width {channels}")

        teacher_params = pure_dict(teacher_state)
        teacher_sh = sharding.param_shardings(teacher_state, sharding.rules_for(config), mesh)
        place = ((lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)) if abstract else jax.device_put)
        self._frozen = (jax.tree.map(place, teacher_params, teacher_sh), teacher_sh)
        del teacher

        # Data: probe every video once, skip unreadable ones, split off the held-out videos.
        self.train_index = self.eval_index = None
        if with_data:
            self._index_videos(config.data, workdir)
        self.part, self.parts = sharding.row_group(mesh)  # which of the batch's rows this process reads
        if config.batch_size % self.parts:
            raise ValueError(f"batch_size {config.batch_size} is not divisible by the {self.parts} processes that "
                             "read different rows")
        self.local_batch = config.batch_size // self.parts
        self._weights_hash = None
        self.target_cache = None
        source = config.get("targets", "online")
        self.cached_targets = source.startswith("cache:")  # the step reads targets from the batch
        if self.cached_targets and with_data:
            self.target_cache = self._open_target_cache(source[len("cache:"):])
        elif source != "online" and not source.startswith("cache:"):
            raise ValueError(f"targets={source!r}: choose 'online' (the teacher at every step) or 'cache:DIR' "
                             "(a target cache built by --config=configs/targets.py)")

    def target_settings(self) -> dict:
        """Everything a target depends on, as a target cache's manifest records it (and a run compares it)."""
        c = self.config
        t, comp, d = c.teacher, c.compression, c.data
        return {
            "teacher": {"init": t.init, "kind": t.get("kind", "internvit"), "output": t.output,
                        "feature_layer": t.get("feature_layer"), "image_size": self.teacher_image_size,
                        "weights_sha256": self.teacher_weights_hash()},
            "compression": {"method": comp.get("method", "wap"), "window": list(self.window),
                            "weighting": comp.weighting, "sigma": float(comp.sigma)},
            "data": {"num_frames": self.num_frames, "frame_stride": int(d.frame_stride),
                     "clip_hop": int(d.clip_hop), "pixel_mean": [float(x) for x in d.pixel_mean],
                     "pixel_std": [float(x) for x in d.pixel_std],
                     "clips_sha256": target_cache.clip_list_hash(self.train_index.clips)},
            "dtype": c.dtype,
        }

    def _open_target_cache(self, folder: str) -> target_cache.TargetCache:
        target_cache.check_manifest(folder, self.target_settings())
        cache = target_cache.TargetCache(folder, self.train_index.clips)
        if tuple(cache.shape) != (int(np.prod(self.target_grid)), self.target_shape[-1]):
            raise ValueError(f"target cache {folder} holds targets of shape {cache.shape}, this run's are "
                             f"{(int(np.prod(self.target_grid)), self.target_shape[-1])}")
        log(f"[ctd] targets read from the cache {folder} ({len(cache)} clips): the teacher runs only for the "
            "held-out evaluation")
        return cache

    def teacher_weights_hash(self) -> str:
        if self._weights_hash is None:
            self._weights_hash = target_cache.weights_hash(jax.device_get(self._frozen[0]))
        return self._weights_hash

    def _index_videos(self, d, workdir: str) -> None:
        train_videos, eval_videos = sources.videos(d, workdir)
        infos = index_videos_of_run(train_videos + eval_videos, d, workdir, "ctd")
        limit = float(d.get("max_video_minutes", 0.0))
        self.train_index = clips_lib.build_index(train_videos, self.num_frames, d.frame_stride, d.clip_hop, infos,
                                                 limit)
        log(f"[ctd] train data: {self.train_index.report()}")
        self.eval_index = (clips_lib.build_index(eval_videos, self.num_frames, d.frame_stride, d.clip_hop, infos,
                                                 limit) if eval_videos else None)
        if self.eval_index:
            log(f"[ctd] held-out data: {self.eval_index.report()}")
        else:
            log("[ctd] no held-out videos: the held-out cosine similarity will not be measured")
        clips = self.train_index.clips
        self.data_watch = bad_data.MidRun(lambda i: clips[i].path, d.max_bad_in_a_row, "clips")
        where = d.videos if isinstance(d.videos, str) else "data.videos"
        bad_data.check_fraction(self.train_index.tally, len(train_videos), float(d.max_bad_fraction), where)

    # --- Task interface ---
    def build_model(self, rngs: nnx.Rngs) -> nnx.Module:
        return self.spec.build(rngs=rngs, dtype=self.dtype, attn_impl=self.attn_impl,
                               tail_kernel=self.kernels["block_tail"], mesh=self.mesh)

    def frozen(self):
        return self._frozen

    def batch_spec(self):
        s, b = self.teacher_image_size, self.config.batch_size
        spec = {"frames": jax.ShapeDtypeStruct((b, self.num_frames, s, s, 3), jnp.uint8)}
        if self.cached_targets:
            spec["targets"] = jax.ShapeDtypeStruct((b, int(np.prod(self.target_grid)), self.target_shape[-1]),
                                                   jnp.float32)
        return spec

    def train_dataset(self, start: int = 0):
        d = self.config.data
        cache = None
        if d.clip_cache:
            cache = clip_cache.open_or_build(self.train_index.clips, d.clip_cache, self.teacher_image_size,
                                             workers=d.cache_workers, may_build=jax.process_count() == 1,
                                             log=log)
        return pipeline.train_dataset(
            self.train_index.clips, size=self.teacher_image_size, batch_size=self.local_batch,
            seed=self.config.seed, process_index=self.part, process_count=self.parts,
            num_workers=d.num_workers, read_threads=d.read_threads, prefetch=d.prefetch, cache=cache, start=start,
            targets=self.target_cache, watch=self.data_watch)

    def describe_examples(self, indices) -> list[dict]:
        clips = self.train_index.clips
        return [{"index": int(i), "video": clips[i].path, "frames": list(clips[i].frame_indices)} for i in indices]

    def targets(self, teacher_params, frames_uint8):
        """uint8 (B, T, S, S, 3) -> compressed teacher tokens (B, N, C), float32."""
        d = self.config.data
        b, t, s = frames_uint8.shape[:3]
        pixels = normalise(frames_uint8, d.pixel_mean, d.pixel_std, self.dtype).reshape(b * t, s, s, 3)
        teacher = nnx.merge(self.teacher_graphdef, teacher_params)
        grid = teacher.features(pixels, self.output).astype(jnp.float32)
        grid = grid.reshape(b, t, *grid.shape[1:])
        c = self.config.compression
        pooled = compression.reduce(grid, self.window, c.get("method", "wap"), c.weighting, c.sigma)
        return pooled.reshape(b, -1, pooled.shape[-1])

    def predict(self, student, frames_uint8):
        d = self.config.data
        x = normalise(frames_uint8, d.pixel_mean, d.pixel_std, self.dtype)
        size = self.student_cfg.image_size
        if x.shape[2] != size:  # the student may run at a lower resolution than the teacher
            x = jax.image.resize(x, (*x.shape[:2], size, size, 3), "bilinear")
        return student(x)

    def prepare(self, frozen, batch, rng):
        if "targets" in batch:  # read from the target cache: the teacher does not run
            return batch["targets"]
        return self.targets(frozen, batch["frames"])

    def loss(self, model, batch, prepared, rng):
        l = self.config.loss
        return losses.ctd_loss(self.predict(model, batch["frames"]), prepared, mse_weight=l.mse_weight,
                               cosine_weight=l.cosine_weight, clip_sigma=l.clip_sigma)

    def eval_batches(self):
        if not self.eval_index:
            return iter(())
        per_process = self.config.eval_batch_size // self.parts
        return pipeline.eval_batches(self.eval_index.clips, size=self.teacher_image_size, batch_size=per_process,
                                     process_index=self.part, process_count=self.parts)

    def eval_sums(self, model, frozen, batch, mask):
        target = self.targets(frozen, batch["frames"])
        pred = self.predict(model, batch["frames"]).astype(jnp.float32)
        cosine = losses.cosine_similarity(pred, target).mean(-1)
        mse = jnp.square(pred - target).mean((-1, -2))
        m = mask.astype(jnp.float32)
        return {"cosine": (cosine * m).sum(), "mse": (mse * m).sum(), "count": m.sum()}

    def summary(self, result) -> list[str]:
        lines = []
        if result.eval:
            start = (f" (at the start: {result.eval_at_start['cosine']:.4f})" if result.eval_at_start else "")
            lines.append(f"held-out student-vs-target cosine similarity: {result.eval['cosine']:.4f}{start} "
                         f"over {len(self.eval_index.clips)} clips of {len(self.eval_index.videos)} held-out videos")
        skipped = len(self.train_index.skipped) + (len(self.eval_index.skipped) if self.eval_index else 0)
        if skipped:
            lines.append(f"videos skipped at start-up: {skipped} (listed then, by reason)")
        if self.data_watch is not None and self.data_watch.tally.total:
            lines.append(f"mid-run: {self.data_watch.tally.summary()} (their video failed to decode)")
        lines.append("next: adapt an LLM to this student with\n  python -m liteframe_jax.main "
                     f"--config=configs/lma.py --config.student.init={result.workdir}")
        return lines

