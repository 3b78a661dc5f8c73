"""Optimizer: AdamW with linear warm-up and cosine decay, global-norm clipping, no decay on 1-D params."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
    """Warm-up then cosine decay over `decay_steps` (-1: the run's total_steps; fix it to keep the schedule
    unchanged when a finished run is extended with a larger total_steps)."""
    if opt_cfg.decay_steps > 0:
        total_steps = opt_cfg.decay_steps
    warmup = int(round(opt_cfg.warmup_fraction * total_steps)) if opt_cfg.warmup_steps < 0 else opt_cfg.warmup_steps
    warmup = min(max(warmup, 0), max(total_steps - 1, 0))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=opt_cfg.lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
        end_value=opt_cfg.lr * opt_cfg.end_lr_fraction)


def make_optimizer(opt_cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(opt_cfg, total_steps)
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)  # biases, norms, scales: no decay
    tx = optax.chain(
        optax.clip_by_global_norm(opt_cfg.grad_clip) if opt_cfg.grad_clip > 0 else optax.identity(),
        optax.adamw(schedule, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay,
                    mask=decay_mask),
    )
    return tx, schedule
