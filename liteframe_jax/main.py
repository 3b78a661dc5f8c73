"""Entry point: `python -m liteframe_jax.main --config=configs/ctd.py[:preset] [--workdir=DIR] [--config.x=y]`.

Loads the ml_collections config (locked, so a misspelt override is an error naming the key), sets up
multi-host JAX when launched on several processes and the persistent compilation cache, and dispatches on
`config.trainer` through the jobs table (jobs.py). Exit status 0 when done; 75 when a preemption notice
(SIGTERM) stopped a training run after a checkpoint of its last step (train/preemption.py): run the same
command again to continue; 130 after a Ctrl-C (a training run first checkpoints its last step, the same
command continues); 1 after bad input (one line on stderr, the traceback in WORKDIR/error_traceback.txt, or in
the system's temporary folder when there is no workdir); 2 for a mistake in the command line: a misspelt flag,
config key or preset, a config value no run can use (train/validate.py), a workdir that is a file.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from liteframe_jax import jobs
from liteframe_jax.core import checkpoint, errors, paths, run_lock
from liteframe_jax.core.run_dir import RunDir

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
_ANSWER_ONLY = flags.DEFINE_bool("answer_only", False, "With --compile_only --answer_frames: compile answering "
                                 "alone (on the config's mesh), not the training step.")


def enable_compilation_cache(workdir: str) -> None:
    """JAX's persistent compilation cache, so a resumed or repeated run loads its compiled step instead of
    compiling it again: `--compilation_cache` (default WORKDIR/compilation_cache; 'off': none). A
    JAX_COMPILATION_CACHE_DIR in the environment is left as it is."""
    import jax
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or _CACHE.value == "off":
        return
    jax.config.update("jax_compilation_cache_dir", _CACHE.value or RunDir(workdir).compilation_cache)


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
        return _usage_error("--config is required, e.g. --config=configs/ctd.py")
    try:
        job = jobs.job(config)
    except ValueError as e:
        return _usage_error(str(e))
    try:
        workdir = paths.resolve(_WORKDIR.value or job.default_workdir(config))
    except (ValueError, ModuleNotFoundError) as e:
        return _usage_error(str(e))
    if paths.exists(workdir) and not paths.isdir(workdir):
        return _usage_error(f"--workdir={workdir} is a file; a run folder is a folder: give another path")
    logging.set_verbosity(logging.ERROR)  # our own progress lines go to stdout
    if _TOPOLOGY.value and not _COMPILE_ONLY.value:
        raise app.UsageError("--topology compiles for devices this host does not have: add --compile_only")
    if _COMPILE_ONLY.value:
        if _TOPOLOGY.value and not os.environ.get("JAX_PLATFORMS"):
            import jax  # the topology's devices come from libtpu; this host's own accelerators stay unused
            jax.config.update("jax_platforms", "cpu")
        try:
            return jobs.compile_only(config, workdir, _TOPOLOGY.value, _NUM_SLICES.value,
                                     tuple(int(n) for n in _ANSWER_FRAMES.value), _ANSWER_ONLY.value)
        except _INPUT_ERRORS as e:
            return _one_line_error(e, workdir)
    from liteframe_jax.train import validate
    try:
        with contextlib.ExitStack() as held:
            if job.trains:
                maybe_initialize_distributed()
                import jax
                validate.check(config, jax.device_count(), jax.process_count())  # before anything is built
                paths.makedirs(workdir)
                # one run per workdir, from before the task is built (its video index is written there)
                held.enter_context(run_lock.hold(workdir, jax.process_index()))
                enable_compilation_cache(workdir)
            validate.check_inputs(config)
            return job.run(config, workdir)
    except validate.ConfigError as e:
        status = _usage_error(str(e))
    except KeyboardInterrupt:  # outside the training loop, which takes Ctrl-C itself (train/preemption.py)
        print("interrupted (Ctrl-C); a training run continues from its last checkpoint with the same command",
              file=sys.stderr)
        status = errors.INTERRUPTED
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
# does not fit the device, a diverged run, a disk too full for a checkpoint): each message names the problem, so
# it is said in one line and the traceback, for a bug report, goes to a file. Anything else is a bug and keeps
# its traceback.
_INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, MemoryError,
                 FloatingPointError, ModuleNotFoundError, checkpoint.CheckpointWriteError)


def _one_line_error(error: BaseException, workdir: str) -> int:
    # the workdir's file when the run has one; `generate` (whose default workdir is the current folder) and runs
    # that failed before making theirs write to the system's temporary folder
    has_own = _WORKDIR.value is not None or os.path.realpath(workdir) != os.getcwd()
    folder = workdir if has_own and paths.isdir(workdir) else None
    errors.say_exception(error, folder, process_index=_process_index(), process_count=_process_count())
    return errors.INPUT


def _usage_error(message: str) -> int:
    """A mistake in the command line: one line, status 2 (absl's UsageError would print every flag's help)."""
    errors.say(message, None, None)
    return errors.USAGE


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
        message, text = errors.config_file_error(str(e))
        if text:
            errors.say(message, text, None)
            sys.exit(errors.USAGE)
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
