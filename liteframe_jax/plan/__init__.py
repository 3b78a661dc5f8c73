"""Frame-budget planning: how many frames a model can read on a device within a time to first token, from a
device profile that `python -m liteframe_jax.bench latency_profile` measures (plan/profile.py holds its
format and the cost model, plan/planner.py the choice, `python -m liteframe_jax.plan` the command)."""
