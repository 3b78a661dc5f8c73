"""Console lines for people: printed by process 0 only, so a multi-process run says each thing once."""

from __future__ import annotations

import sys

import jax


def log(message: str) -> None:
    if jax.process_index() == 0:
        print(message, file=sys.stdout, flush=True)
