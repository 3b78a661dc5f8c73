"""Benchmarks (`python -m liteframe_jax.bench ...`): throughput, MFU and memory on the current accelerator."""
