"""Test setup: 8 fake CPU devices before jax loads, Hugging Face offline, float32 matmuls, and one persistent
compilation cache for the session (its subprocesses included): many tests compile the same tiny steps."""

import os
import tempfile

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="liteframe_jax_tests_xla_"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

from absl import flags  # noqa: E402

# Grain's worker processes read absl flags; under pytest nobody parses them.
flags.FLAGS.mark_as_parsed()



# The longest tests first: with two xdist workers taking tests in collection order, a long test collected last
# would run alone at the end while the other worker idles.
_LONGEST_FIRST = ("test_lma.py::test_demo_answers", "test_multiprocess.py", "test_ctd.py::test_preempted",
                  "test_lma.py::test_one_and_eight", "test_ctd.py::test_one_and_eight", "test_target_cache.py",
                  "test_lma.py::test_preempted", "test_object_store.py::test_ctd_run")


# The end-to-end tier, marked `integration`: files whose tests train (the demo's trainers, resumes, several
# processes, buckets), run the entry point in subprocesses or export trained runs. `pytest -m "not integration"`
# runs the rest (models, data, convert, eval, sharding on the fake devices) as the fast tier.
_INTEGRATION_FILES = {"test_ctd.py", "test_lma.py", "test_multiprocess.py", "test_target_cache.py",
                      "test_object_store.py", "test_input_mistakes.py", "test_faults.py", "test_export.py",
                      "test_hf_export.py", "test_tfds_videos.py", "test_damaged_checkpoint.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in _INTEGRATION_FILES:
            item.add_marker(pytest.mark.integration)

    def rank(item):
        for i, key in enumerate(_LONGEST_FIRST):
            if key in item.nodeid:
                return i
        return len(_LONGEST_FIRST)
    items.sort(key=rank)  # stable: the rest keeps its order
