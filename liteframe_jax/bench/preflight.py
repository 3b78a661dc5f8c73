"""What a bench command needs that this machine may not have, checked before anything runs: the benches at
their real sizes need an accelerator (on a CPU they run for hours, or until the kernel stops them for memory),
cuDNN attention needs a GPU, NVDEC decoding needs a GPU and PyNvVideoCodec. A command that cannot run here
refuses in one line naming what it needs and how to run it anyway (`--small`, `--attention=xla`,
`--decoder=pyav`).
"""

from __future__ import annotations

# benches that run models at the paper's sizes; the rest (export, index, pipeline) measure host work
ON_AN_ACCELERATOR = ("matmul", "encoders", "ctd", "lma", "latency", "profile", "scaling", "probe", "targets")


def problems(what: set[str], *, small: bool, attention: list, decoder: str, decode: str | None, backend: str,
             nvdec_problem: str | None) -> list[str]:
    """Why the benches `what` cannot run as asked on a `backend` JAX platform ([] when they can)."""
    found = []
    heavy = sorted(what & set(ON_AN_ACCELERATOR))
    if heavy and not small and backend == "cpu":
        found.append(f"{', '.join(heavy)} at full size {'needs' if len(heavy) == 1 else 'need'} a GPU or TPU (JAX "
                     "runs on cpu here): add --small for a CPU-sized run")
    if "cudnn" in attention and backend != "gpu" and what & {"encoders", "ctd", "lma", "latency", "profile",
                                                             "scaling", "probe"}:
        found.append(f"--attention=cudnn needs a GPU (JAX runs on {backend} here): add --attention=xla")
    if "latency" in what and decode is not None and decoder == "nvdec" and nvdec_problem:
        found.append(f"--decoder=nvdec cannot run here: {nvdec_problem}; use --decoder=pyav or auto")
    return found
