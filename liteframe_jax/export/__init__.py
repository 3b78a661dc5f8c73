"""Export of run folders to PyTorch and Hugging Face formats: `python -m liteframe_jax.export` (see `run.py`)."""
