"""Entry point: `python -m liteframe_jax.main --config=configs/ctd.py[:preset] [--workdir=DIR] [--config.x=y]`.

Loads the ml_collections config (locked, so a misspelt override is an error naming the key), sets up
multi-host JAX when launched on several processes and the persistent compilation cache, and dispatches on
`config.trainer` through the jobs table (jobs.py). Exit status 0 when done; 75 when a preemption notice
(SIGTERM) stopped a training run after a checkpoint of its last step (train/preemption.py): run the same
command again to continue; 1 after bad input (one line on stderr, the traceback in
WORKDIR/error_traceback.txt); 2 for a misspelt flag or config key.
"""

from __future__ import annotations

import ast
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from liteframe_jax import jobs
from liteframe_jax.core import paths

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file, e.g. configs/ctd.py:demo.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, plots. Default: runs/<trainer>.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-process runs (or set by the cluster).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
_CACHE = flags.DEFINE_string("compilation_cache", None, "Folder of JAX's persistent compilation cache for training "
                             "jobs (default: WORKDIR/compilation_cache; 'off' turns it off).")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Build the training job's state and step as training does, "
                                  "compile it ahead of time and report memory, FLOPs, collectives and a roofline "
                                  "estimate; reads no data or weights and trains nothing.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "With --compile_only: compile for this Cloud TPU topology "
                                "(e.g. v5e:2x4, v5p:2x2x2; needs libtpu: requirements-tpu.txt) instead of this "
                                "host's devices.")
_NUM_SLICES = flags.DEFINE_integer("num_slices", 1, "With --topology: that many slices of it, joined over DCN.")
_ANSWER_FRAMES = flags.DEFINE_list("answer_frames", [], "With --compile_only and an LMA config: also compile "
                                   "answering one question (encode, prefill) at these frame counts, e.g. 64,512,1024.")


def enable_compilation_cache(workdir: str) -> None:
    """JAX's persistent compilation cache, so a resumed or repeated run loads its compiled step instead of
    compiling it again: `--compilation_cache` (default WORKDIR/compilation_cache; 'off': none). A
    JAX_COMPILATION_CACHE_DIR in the environment is left as it is."""
    import jax
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or _CACHE.value == "off":
        return
    jax.config.update("jax_compilation_cache_dir", _CACHE.value or os.path.join(workdir, "compilation_cache"))


def maybe_initialize_distributed() -> None:
    """jax.distributed for multi-process runs: explicit flags, or the cluster's environment (TPU/SLURM)."""
    import jax
    if _COORDINATOR.value or _NUM_PROCESSES.value or os.environ.get("LITEFRAME_DISTRIBUTED") == "auto":
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":  # cross-process collectives on CPU need gloo
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if _COORDINATOR.value or _NUM_PROCESSES.value:
        jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                                   process_id=_PROCESS_ID.value)
    elif os.environ.get("LITEFRAME_DISTRIBUTED") == "auto":
        jax.distributed.initialize()


def main(argv):
    del argv
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config=configs/ctd.py")
    try:
        job = jobs.job(config)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    try:
        workdir = paths.resolve(_WORKDIR.value or job.default_workdir(config))
    except (ValueError, ModuleNotFoundError) as e:
        raise app.UsageError(str(e)) from None
    logging.set_verbosity(logging.ERROR)  # our own progress lines go to stdout
    if _TOPOLOGY.value and not _COMPILE_ONLY.value:
        raise app.UsageError("--topology compiles for devices this host does not have: add --compile_only")
    if _COMPILE_ONLY.value:
        try:
            return jobs.compile_only(config, workdir, _TOPOLOGY.value, _NUM_SLICES.value,
                                     tuple(int(n) for n in _ANSWER_FRAMES.value))
        except _INPUT_ERRORS as e:
            return _one_line_error(e, workdir)
    if job.trains:
        maybe_initialize_distributed()
        paths.makedirs(workdir)
        enable_compilation_cache(workdir)
    try:
        return job.run(config, workdir)
    except _INPUT_ERRORS as e:
        status = _one_line_error(e, workdir)
    except Exception:
        if _process_count() == 1:
            raise
        import traceback
        traceback.print_exc()
        status = 1
    if _process_count() > 1:
        # jax.distributed's exit waits at a barrier for every process, while the others may wait in a
        # collective for this one: ending at once makes theirs fail (gloo, at once) or the coordination
        # service stop them (its heartbeat timeout), instead of every process waiting out the barrier.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


# What bad input raises here (a wrong path, a config that does not fit the data or the checkpoint, a step that
# does not fit the device, a diverged run): each message names the problem, so it is said in one line and the
# traceback, for a bug report, goes to a file. Anything else is a bug and keeps its traceback.
_INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, MemoryError,
                 FloatingPointError, ModuleNotFoundError)


def _one_line_error(error: BaseException, workdir: str) -> int:
    import traceback
    text = "".join(traceback.format_exception(error))
    where = os.path.join(workdir, "error_traceback.txt" if _process_count() == 1 else
                         f"error_traceback.process-{_process_index()}.txt")
    try:
        paths.write_text(where, text)
    except Exception:  # an unwritable workdir must not hide the error itself
        where = None
    first = str(error).strip() or type(error).__name__
    who = f" in process {_process_index()} of {_process_count()}" if _process_count() > 1 else ""
    print(f"error{who}: {first}" + (f"\n(traceback in {where})" if where else ""), file=sys.stderr)
    return 1


def _process_index() -> int:
    import jax
    return jax.process_index()


def _process_count() -> int:
    import jax
    return jax.process_count()


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a misspelt `--config.a.b` key or a value of the wrong type said in one line
    (exit status 2) instead of ml_collections' traceback."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        message = str(e)
    except (KeyError, AttributeError) as e:  # ml_collections: a field the config does not have
        text = str(e.args[0] if e.args else e)
        for _ in range(2):  # its messages arrive as the repr of a KeyError's message
            try:
                text = ast.literal_eval(text) if text[:1] in "'\"" else text
            except (ValueError, SyntaxError):
                break
        key = re.search(r"'([^']+)'", text)
        key = key.group(1) if key else text
        named = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("--config.") and
                 key in a.split("=", 1)[0].split(".")]
        hint = re.search(r'Did you mean "([^"]+)"', text)
        message = (f"{named[0] if named else '--config'}: the config has no field {key!r}"
                   + (f"; did you mean {hint.group(1)!r}?" if hint else ""))
    except (TypeError, ValueError) as e:
        message = str(e)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    sys.exit(app.run(main, flags_parser=parse_flags))
