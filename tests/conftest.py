"""Test setup: 8 fake CPU devices and a fast CPU compile (tests/cpu_flags.py) before jax loads, Hugging Face
offline, float32 matmuls, and one persistent compilation cache for the session (its subprocesses included):
many tests compile the same tiny steps."""

import os
import tempfile

from cpu_flags import xla_flags

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " " + xla_flags(devices=8)
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



# The end-to-end tier, marked `integration`: files whose tests train (the demo's trainers, resumes, several
# processes, buckets), run the entry point in subprocesses or export trained runs, and single tests elsewhere
# that compile whole training steps, kernels' backward passes, benches or TPU programs (each over ~10 s on 2
# cores). `pytest -m "not integration"` runs the rest (models, data, convert, eval, sharding on the fake
# devices) as the fast tier.
_INTEGRATION_FILES = {"test_ctd.py", "test_lma.py", "test_multiprocess.py", "test_target_cache.py",
                      "test_object_store.py", "test_input_mistakes.py", "test_faults.py", "test_export.py",
                      "test_hf_export.py", "test_tfds_videos.py", "test_damaged_checkpoint.py",
                      "test_bench_latency.py", "test_bench_scaling.py", "test_bench_training.py"}
_INTEGRATION_TESTS = (
    "test_bench_probe.py::test_bench_probe_runs_and_compares_stage_by_stage",
    "test_block_tail.py::test_student_gradient_with_the_tail_kernels_matches_xla",
    "test_block_tail.py::test_backward_kernel_is_the_reference_gradient",
    "test_block_tail.py::test_tail_kernels_on_a_mesh_split_the_batch_and_match_one_device",
    "test_compile.py::test_compile_only_on_this_hosts_devices_reports_fsdp_collectives",
    "test_compile.py::test_the_encoder_a_few_clips_a_pass_gives_the_same_tokens_and_gradients",
    "test_compile.py::test_answering_compiles_at_each_frame_count",
    "test_compile.py::test_a_frozen_llm_kept_in_bfloat16_gives_the_same_step",
    "test_context_parallel.py::test_lma_step_with_context_equals_one_device",
    "test_context_parallel.py::test_attention_over_a_split_sequence_equals_xla",
    "test_qwen2_parity.py::test_remat_policies_and_scanned_layers_give_the_same_loss_and_gradients",
    "test_lmms_eval_model.py::test_lmms_eval_answers_the_demo_questions_as_the_harness_does",
    "test_tpu_attention.py::test_qwen2_with_splash_on_a_mesh_equals_xla",
    "test_tpu_attention.py::test_splash_equals_xla_attention_with_padding_and_gradients",
    "test_tpu_attention.py::test_both_attention_paths_compile_for_a_tpu_topology",
    "test_tpu_attention.py::test_the_students_attention_as_splash_on_a_mesh_equals_xla",
    "test_clip_cache.py::test_cache_reads_back_the_decoding_pipeline_batches",
    "test_eval_sweep.py::test_the_first_token_timed_is_the_one_answering_gives",
    "test_compression_student.py::test_student_output_grid_and_shape",
    "test_eval_shards.py::test_a_batch_split_over_eight_devices_answers_as_one_device",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in _INTEGRATION_FILES or any(key in item.nodeid for key in _INTEGRATION_TESTS):
            item.add_marker(pytest.mark.integration)
    # The integration tier first: two xdist workers take tests in collection order, and a long test collected
    # last would run alone at the end while the other worker idles.
    items.sort(key=lambda item: item.get_closest_marker("integration") is None)  # stable within each tier
