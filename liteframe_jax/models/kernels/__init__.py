"""Hand-written kernels the models can run instead of XLA's code: Pallas for NVIDIA Hopper GPUs (the student's
block tail forward and backward, fc1 + GELU) and for TPUs (splash attention). `models/kernel_choice.py` says
which one runs where; every kernel has an XLA path it is tested against."""
