"""Ahead-of-time compiles of the real train step (`--compile_only`): for this host's 8 CPU devices, and for Cloud
TPU topologies through libtpu without a TPU; the collectives read from the optimized HLO; the strided
micro-batches of gradient accumulation."""

import json
import os
import subprocess
import sys

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from helpers import REPO, load_config
from liteframe_jax.core import hardware, hlo, sharding
from liteframe_jax.train import aot
from liteframe_jax.train import step as step_lib

needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu is not installed (requirements-tpu.txt)")

HLO = """HloModule jit_step, num_partitions=4

%body.1 (p: (s32[], f32[64,8])) -> (s32[], f32[64,8]) {
  %ag = bf16[64,16]{1,0} all-gather(bf16[16,16]{1,0} %x), channel_id=1, replica_groups=[1,4]<=[4], dimensions={0}
  %rs = f32[16,8]{1,0:T(8,128)} reduce-scatter(%g), channel_id=2, replica_groups={{0,1,2,3}}, dimensions={0}
}

%cond.1 (p: (s32[], f32[64,8])) -> pred[] {
}

ENTRY %main (a: f32[64,8]) -> f32[64,8] {
  %w = (s32[], f32[64,8]) while(%t), condition=%cond.1, body=%body.1, backend_config={"known_trip_count":{"n":"3"}}
  %ar = f32[1000]{0} all-reduce(%y), channel_id=3, replica_groups=[2,2]<=[2,2]T(1,0), to_apply=%add
  %send = (f32[500]{0}, u32[], token[]) send(%ar, %aa), channel_id=4, is_host_transfer=true, frontend_attributes={_xla_host_transfer_handler_name="xla_megascale_runtime",_xla_megascale_transfer_type="ALL_REDUCE"}
}
"""


def test_collectives_of_an_hlo_module_counted_per_run_with_their_bytes():
    found = hlo.in_hlo(HLO, [0, 0, 0, 0], slices=2)
    by_kind = {c["kind"]: c for c in found if not c["dcn"]}
    # inside a loop of 3 trips: three runs each
    assert by_kind["all-gather"] == {"kind": "all-gather", "runs": 3, "bytes": 64 * 16 * 2, "group": 4, "dcn": False}
    # a reduce-scatter's operand is written without its type: the whole buffer is the result times the group
    assert by_kind["reduce-scatter"]["bytes"] == 16 * 8 * 4 * 4
    assert by_kind["all-reduce"]["group"] == 2 and by_kind["all-reduce"]["runs"] == 1
    dcn = [c for c in found if c["dcn"]]
    assert [(c["kind"], c["group"], c["bytes"]) for c in dcn] == [("all-reduce", 2, 500 * 4 + 4)]
    t = hlo.traffic(found)
    assert t["ici"] == pytest.approx(3 * 0.75 * 2048 + 3 * 0.75 * 2048 + 2 * 0.5 * 4000)
    assert t["dcn"] == pytest.approx(2 * 0.5 * 2004)
    assert hlo.summary(found)["all-gather"]["count"] == 3


def test_groups_that_span_slices_are_dcn():
    line = "  %ar = f32[8]{0} all-reduce(f32[8]{0} %y), replica_groups={{0,4},{1,5}}, to_apply=%add"
    text = f"HloModule m\n\nENTRY %main () -> f32[8] {{\n{line}\n}}\n"
    assert hlo.in_hlo(text, [0, 0, 0, 0, 1, 1, 1, 1])[0]["dcn"]
    assert not hlo.in_hlo(text, [0] * 8)[0]["dcn"]


@pytest.mark.parametrize("name, expected", [("v5p-8", "v5p:2x2x1"), ("v5p-16", "v5p:2x2x2"), ("v5e-8", "v5e:2x4"),
                                            ("v5e-256", "v5e:16x16"), ("v4-8", "v4:2x2x1"), ("v6e-8", "v6e:2x4"),
                                            ("v5p:2x2x2", "v5p:2x2x2")])
def test_accelerator_types_name_their_topology(name, expected):
    assert hardware.topology_name(name)[1] == expected


@needs_libtpu
def test_a_single_chip_topology_is_described():  # smaller than a host's 2x2: libtpu needs the host's bounds
    chip, devices = hardware.topology_devices("v6e-1")
    assert chip.name == "v6e" and len(devices) == 1 and devices[0].device_kind == "TPU v6 lite"


@pytest.mark.parametrize("name", ["v5p-12", "v9-8", "v5e", "h100-8"])
def test_unknown_topologies_are_refused_with_what_exists(name):
    with pytest.raises(ValueError, match="topology|accelerator type"):
        hardware.topology_name(name)


def test_micro_batches_are_strided_and_stay_on_every_device():
    mesh = sharding.make_mesh(load_config("ctd", "demo").mesh)
    layout = sharding.batch_sharding(mesh, 2)
    x = jax.device_put(jnp.arange(32 * 3).reshape(32, 3), layout)
    micro = jax.jit(lambda x: step_lib.micro_batches(x, 4, layout))(x)
    assert micro.shape == (4, 8, 3)
    for i in range(4):
        np.testing.assert_array_equal(micro[i], np.asarray(x)[i::4])
    # each device holds its own rows of every micro-batch: nothing crosses devices
    assert micro.sharding.is_equivalent_to(NamedSharding(mesh, P(None, ("data", "fsdp"), None)), 3)
    text = jax.jit(lambda x: step_lib.micro_batches(x, 4, layout)).lower(x).compile().as_text()
    assert not hlo.in_hlo(text, [0] * 8)


def test_weights_over_context_split_the_fsdp_dimension_over_the_rows_chips_too():
    from flax import nnx
    from liteframe_jax.train.lma import LMATask
    c = load_config("lma", "demo")
    c.student.init = "random"
    c.mesh.update(data=1, fsdp=2, context=4)
    task = LMATask(c, sharding.make_mesh(c.mesh), "/tmp/unused", with_data=False)
    state = nnx.state(nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0))))
    q = lambda config: sharding.param_shardings(state, sharding.rules_for(config), task.mesh)["llm"]
    assert dict(sharding.rules_for(c))["embed"] == "fsdp" and q(c)["embed"].spec == P(None, "fsdp")
    c.mesh.weights_over_context = True
    assert dict(sharding.rules_for(c))["embed"] == ("fsdp", "context")
    assert q(c)["embed"].spec == P(None, ("fsdp", "context"))  # 8 parts: every chip a different one
    assert dict(sharding.rules_for(c))["mlp"] == "tensor"  # rules without fsdp stay as they are


def test_processes_that_hold_the_same_rows_read_the_same_part_of_the_batch():
    """16 chips, 4 a process: with each row over 8 chips (mesh.context=8) two processes hold every row block."""
    device = lambda i: type("Device", (), {"process_index": i // 4, "id": i})()
    grid = np.asarray([device(i) for i in range(16)], dtype=object).reshape(1, 2, 8, 1)
    assert sharding.row_blocks(grid, ("data", "fsdp", "context", "tensor")) == {0: (0,), 1: (0,), 2: (1,), 3: (1,)}
    # one row block a process (no split rows): one part each, as process_index / process_count
    grid = np.asarray([device(i) for i in range(16)], dtype=object).reshape(4, 2, 2, 1)
    assert sharding.row_blocks(grid, ("data", "fsdp", "context", "tensor")) == {
        0: (0, 1), 1: (2, 3), 2: (4, 5), 3: (6, 7)}
    # rows whose chips straddle processes unevenly: refused, naming the blocks
    grid = np.asarray([device(i) for i in (0, 4, 1, 5, 2, 3, 6, 7)], dtype=object).reshape(1, 4, 2, 1)
    with pytest.raises(ValueError, match="overlapping but unequal"):
        sharding.row_blocks(grid, ("data", "fsdp", "context", "tensor"))


def test_frames_split_over_context_arrive_and_stay_split():
    """With mesh.context, a batch's frames are held split along the frame axis as well as by rows (no chip holds
    every frame of the batch), and micro-batches keep that layout with nothing moved between devices."""
    mesh = sharding.make_mesh({"data": 2, "fsdp": 1, "tensor": 1, "context": 4})
    frames = np.arange(8 * 16 * 3).reshape(8, 16, 3).astype(np.uint8)
    tokens = np.arange(8 * 12).reshape(8, 12).astype(np.int32)
    batch = sharding.global_batch({"frames": frames, "tokens": tokens}, mesh, over_context=("frames",))
    np.testing.assert_array_equal(batch["frames"], frames)
    np.testing.assert_array_equal(batch["tokens"], tokens)
    assert batch["frames"].sharding.spec == P(("data", "fsdp"), "context", None)
    assert {s.data.shape for s in batch["frames"].addressable_shards} == {(4, 4, 3)}
    assert batch["tokens"].sharding.spec == P(("data", "fsdp"), None)
    layout = batch["frames"].sharding
    micro = jax.jit(lambda x: step_lib.micro_batches(x, 2, layout))(batch["frames"])
    for i in range(2):
        np.testing.assert_array_equal(micro[i], frames[i::2])
    assert micro.sharding.is_equivalent_to(NamedSharding(mesh, P(None, ("data", "fsdp"), "context", None)), 4)
    text = jax.jit(lambda x: step_lib.micro_batches(x, 2, layout)).lower(batch["frames"]).compile().as_text()
    assert not hlo.in_hlo(text, [0] * 8)
    # without the context axis the same call gives the rows' layout alone
    plain = sharding.make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    alone = sharding.global_batch({"frames": frames}, plain, ("frames",))["frames"]
    assert alone.sharding.spec == P(("data", "fsdp"), None, None)


@pytest.mark.integration
def test_accumulated_micro_batches_give_the_whole_batch_step():
    """grad_accum_steps splits a batch without changing the step: the same loss and parameters (float32). The
    targets' outlier clipping takes its statistics over the batch it sees, a micro-batch, so it is off here."""
    from liteframe_jax.bench.training import synthetic_batch
    from liteframe_jax.train import state as state_lib
    from liteframe_jax.train.ctd import CTDTask
    results = []
    for accum in (1, 2):
        c = load_config("ctd", "demo")
        c.batch_size, c.grad_accum_steps, c.loss.clip_sigma = 16, accum, 0.0
        task = CTDTask(c, sharding.make_mesh(c.mesh), "/tmp/unused", with_data=False)
        key = jax.random.key(0)
        lay = state_lib.layout(c, task, key)
        params, frozen_model = state_lib.split(lay.random_model(key), lay.trainable)
        state = jax.jit(lay.fresh_state, out_shardings=lay.state_sh)(params)
        frozen, frozen_sh = (task.frozen()[0], frozen_model), (task.frozen()[1], lay.frozen_model_sh)
        step = step_lib.compile_train_step(c, task, lay, frozen, frozen_sh, key)
        batch = sharding.global_batch(synthetic_batch(task, step.batch_spec, 0), task.mesh)
        state, metrics = step(state, frozen, batch)
        results.append((float(metrics["loss"]), jax.device_get(state["params"])))
    (loss1, p1), (loss2, p2) = results
    assert loss1 == pytest.approx(loss2, rel=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), p1, p2)


def test_a_frozen_llm_kept_in_bfloat16_gives_the_same_step():
    """LMA in bfloat16 keeps the frozen LLM's matrices in bfloat16 (every use casts them to it first): the
    step's loss and trained parameters are bit for bit those of the same step from float32 frozen weights."""
    from liteframe_jax.bench.training import synthetic_batch
    from liteframe_jax.train import state as state_lib
    from liteframe_jax.train.lma import LMATask
    c = load_config("lma", "demo")
    c.student.init, c.dtype, c.train.trainable, c.llm.lora.rank = "random", "bfloat16", "projector+lora", 4
    c.mesh.num_devices, c.batch_size, c.llm.arch.num_layers = 1, 4, 1
    c.student.arch.update(image_size=32, stages=((1, (2, 2, 2)), (1, (1, 1, 1))))  # a small compile
    task = LMATask(c, sharding.make_mesh(c.mesh), "/tmp/unused", with_data=False)
    key = jax.random.key(0)
    lay = state_lib.layout(c, task, key)
    kept = lay.frozen_dtypes
    assert kept and all(p.startswith("llm/") for p in kept) and "llm/embed" in kept
    assert not any(p.endswith("scale") or p.startswith("encoder/") for p in kept)  # norms, the encoder: as they are
    params, frozen_model = state_lib.split(lay.random_model(key), lay.trainable)
    results = []
    for frozen_now in (frozen_model, lay.frozen_as_kept(frozen_model)):
        state = jax.jit(lay.fresh_state, out_shardings=lay.state_sh)(params)
        frozen, frozen_sh = (task.frozen()[0], frozen_now), (task.frozen()[1], lay.frozen_model_sh)
        step = step_lib.compile_train_step(c, task, lay, frozen, frozen_sh, key)
        batch = sharding.global_batch(synthetic_batch(task, step.batch_spec, 4), task.mesh)
        state, metrics = step(state, frozen, batch)
        results.append((float(metrics["loss"]), jax.device_get(state["params"]), step.memory["arguments"]))
    (loss32, p32, args32), (loss16, p16, args16) = results
    assert loss16 == loss32
    jax.tree.map(np.testing.assert_array_equal, p16, p32)
    assert args16 < args32


def test_a_batch_that_micro_batches_cannot_spread_is_refused(tmp_path):
    c = load_config("ctd", "demo")
    c.batch_size, c.grad_accum_steps = 8, 2  # 4 rows a micro-batch, 8 devices
    with pytest.raises(ValueError, match="batch_size must be a multiple of 16"):
        aot.compile_only(c, str(tmp_path))


def test_compile_only_on_this_hosts_devices_reports_fsdp_collectives(tmp_path, capsys):
    c = load_config("ctd", "demo")
    c.mesh.fsdp = 2
    r = aot.compile_only(c, str(tmp_path))
    assert r["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1}
    # FSDP: weights gathered for use (the CPU's XLA reduces gradients by all-reduce, a TPU's by reduce-scatter)
    assert r["collectives"]["all-gather"]["count"] > 0 and "all-reduce" in r["collectives"], r["collectives"]
    assert r["flops_per_device"] > 0 and r["step_bytes"] > 0
    assert json.load(open(tmp_path / aot.REPORT_FILE))["collectives"] == r["collectives"]
    assert "per chip and step" in capsys.readouterr().out


def test_a_step_over_the_chips_memory_names_the_fields_to_change():
    r = {"preset": "lma:paper", "target": "v5p:2x2x1", "step_bytes": 100 * 2 ** 30, "hbm_bytes": 95 * 2 ** 30}
    c = load_config("lma", "paper")
    message = str(aot.fit_error(r, c))
    assert "100.00 GiB per chip on v5p:2x2x1" in message and "90% of its 95.00 GiB" in message
    for field in ("batch_size (now 32;", "grad_accum_steps", "remat", "mesh.fsdp", "mesh.tensor", "sizing"):
        assert field in message


def test_dimensions_the_mesh_does_not_divide_are_said(capsys):
    from flax import nnx
    from liteframe_jax.models.qwen2 import Qwen2, Qwen2Config
    c = load_config("lma", "demo")
    c.mesh.data, c.mesh.tensor = 1, 8  # tensor parallelism over 8 devices; an MLP of 36 and 60 words do not divide
    mesh = sharding.make_mesh(c.mesh)
    cfg = Qwen2Config(vocab_size=60, hidden_size=32, intermediate_size=36, num_layers=1, num_heads=4, num_kv_heads=2)
    state = nnx.state(nnx.eval_shape(lambda: Qwen2(cfg, rngs=nnx.Rngs(0), dtype=jnp.float32, lora=None)))
    sharding.param_shardings(state, c.sharding_rules, mesh)
    out = capsys.readouterr().out
    assert "stay whole on every device" in out
    assert "dim 36 (mlp) not divisible by ('tensor',)=8 in 3 parameter(s)" in out, out
    assert "dim 60 (vocab) not divisible" in out


def _compile_cli(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": REPO}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run([sys.executable, "-m", "liteframe_jax.main", f"--workdir={tmp_path}", "--compile_only",
                           "--compilation_cache=off", *args], capture_output=True, text=True, cwd=REPO, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.load(open(tmp_path / aot.REPORT_FILE)), done.stdout


@pytest.mark.integration
@needs_libtpu
def test_ctd_demo_compiles_for_two_tpu_slices_with_fsdp(tmp_path):
    r, out = _compile_cli(tmp_path, "--config=configs/ctd.py", "--topology=v5e:2x2", "--num_slices=2",
                          "--config.mesh.fsdp=2", "--config.batch_size=16", "--config.grad_accum_steps=2")
    assert r["chip"] == "v5e" and r["devices"] == 8 and r["mesh"] == {"data": 4, "fsdp": 2, "tensor": 1}
    assert r["fits"] and r["hbm_bytes"] == 16 * 2 ** 30
    c = r["collectives"]
    assert c["all-gather"]["count"] > 0 and c["reduce-scatter"]["count"] > 0  # FSDP: gathered weights, scattered grads
    assert c["all-reduce"]["dcn_count"] > 0  # data parallelism across the two slices, over DCN
    assert r["roofline"]["step_s"] > 0 and 0 < r["roofline"]["mfu_bound"] <= 1
    assert "compiled ctd:demo for v5e:2x2 x 2 slices" in out


@pytest.mark.integration
@needs_libtpu
def test_lma_with_fsdp_remat_and_micro_batches_compiles_for_a_tpu(tmp_path):
    """The shape of the configuration whose contiguous micro-batches made the TPU compiler fail (LMA, FSDP over
    every chip, full rematerialisation, gradient accumulation), at the demo's size."""
    r, _ = _compile_cli(tmp_path, "--config=configs/lma.py", "--topology=v5p:2x2x1", "--config.student.init=random",
                        "--config.mesh.data=1", "--config.mesh.fsdp=4", "--config.remat=full",
                        "--config.grad_accum_steps=2", "--config.batch_size=8", "--config.dtype=bfloat16")
    assert r["chip"] == "v5p" and r["fits"] and r["grad_accum_steps"] == 2
    assert r["collectives"]["all-gather"]["count"] > 0 and r["roofline"] and "undercounted" not in r
    # the LLM's layers as a loop: it compiles for the TPU too, and the report says what XLA's count leaves out
    scanned, out = _compile_cli(tmp_path / "scan", "--config=configs/lma.py", "--topology=v5p:2x2x1",
                                "--config.student.init=random", "--config.mesh.data=1", "--config.mesh.fsdp=4",
                                "--config.remat=full", "--config.grad_accum_steps=2", "--config.batch_size=8",
                                "--config.dtype=bfloat16", "--config.scan_layers=True")
    assert scanned["fits"] and scanned["roofline"] is None and "scan_layers" in scanned["undercounted"]
    assert scanned["flops_per_device"] < r["flops_per_device"] and "TFLOP" in out and "(a lower bound: scan_layers" in out


def test_answering_compiles_at_each_frame_count(tmp_path):
    c = load_config("lma", "demo")
    c.student.init, c.mesh.num_devices = "random", 1
    target = aot.Target.of(None)
    task = aot.build_task(c, sharding.make_mesh(c.mesh), str(tmp_path))
    short, long = (aot.compile_answering(c, target, task, n) for n in (8, 32))
    assert (short["frames"], long["frames"]) == (8, 32)
    assert long["visual_tokens"] == 4 * short["visual_tokens"]
    assert (short["prompt_tokens"], long["prompt_tokens"]) == (320, 512)  # visual tokens + 256 of text, rounded
    # more frames: 4x the encoder's work; a prompt 1.6x as long
    assert long["encode"]["flops_per_device"] > 3.5 * short["encode"]["flops_per_device"] > 0
    assert long["prefill"]["flops_per_device"] > 1.5 * short["prefill"]["flops_per_device"] > 0
    assert "32 frames (256 visual tokens, prompt 512): encode" in aot.describe_answering([short, long])
    # answering alone, as `--compile_only --answer_only --answer_frames=8` writes it: no training step
    r = aot.compile_only(c, str(tmp_path / "answer"), answer_frames=(8,), answer_only=True)
    assert set(r) == {"preset", "target", "mesh", "answering"} and r["answering"][0]["frames"] == 8
    assert json.load(open(tmp_path / "answer" / "compile_report.json"))["answering"][0]["visual_tokens"] == 64
    with pytest.raises(ValueError, match="give the frame counts"):
        aot.compile_only(c, str(tmp_path / "answer"), answer_only=True)


def test_answering_that_cannot_fit_is_reported_not_raised():
    class Refused:  # what a TPU compiler does with a program larger than the chip
        def compile(self):
            raise RuntimeError("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
                               "temporaries (43.74G) exceeds available HBM (31.25G).\nmore")

    class Broken:
        def compile(self):
            raise RuntimeError("INTERNAL: something else")

    refusal = aot._compile_or_refusal(Refused())
    assert refusal.startswith("RESOURCE_EXHAUSTED") and "43.74G" in refusal and "more" not in refusal
    with pytest.raises(RuntimeError, match="INTERNAL"):
        aot._compile_or_refusal(Broken())
    fits = {"step_bytes": 2 ** 30, "fits": True, "flops_per_device": 1e12, "seconds_bound": None}
    row = {"frames": 1024, "visual_tokens": 16384, "prompt_tokens": 16640, "prefill": fits,
           "encode": {"step_bytes": None, "fits": False, "refused": refusal, "flops_per_device": 0.0,
                      "seconds_bound": None}}
    assert "encode does not fit (RESOURCE_EXHAUSTED" in aot.describe_answering([row])


def test_auto_sizing_moves_down_the_ladder_until_the_step_fits():
    from liteframe_jax.train import sizing
    c = load_config("lma", "paper")
    c.sizing = "auto"
    tried = []

    def fits(config):  # fits once a micro-batch holds 2 rows on each of the 8 devices, rematerialised
        tried.append((config.remat, config.mesh.fsdp, config.grad_accum_steps))
        rows = config.batch_size // config.grad_accum_steps // 8
        return config.remat == "full" and rows <= 2, f"{rows} rows"

    said = sizing.search(c, 8, fits)
    assert c.encoder_clips_per_pass == 8  # 64 clips at 512 frames, 8 a pass
    assert tried == [("none", 1, 1), ("full", 1, 1), ("full", 1, 1), ("full", -1, 1), ("full", -1, 2)]
    assert (c.remat, c.mesh.data, c.mesh.fsdp, c.grad_accum_steps) == ("full", 1, -1, 2)
    assert said[0] == "remat=full (the step needed 4 rows)"
    c = load_config("lma", "paper")
    assert ("kernels.tower_attention", "splash") not in sizing.ladder(c, 8)
    tpu_rungs = [field for field, _ in sizing.ladder(c, 8, tpu=True)]
    assert tpu_rungs.index("kernels.tower_attention") == tpu_rungs.index("mesh.fsdp") + 1  # before accumulation
    with pytest.raises(MemoryError, match="no rung of the ladder fits"):
        sizing.search(c, 8, lambda config: (False, "too much"))


def test_when_one_row_a_chip_is_too_much_auto_sizing_splits_rows_over_chips():
    from liteframe_jax.train import sizing
    c = load_config("lma", "paper")
    c.sizing = "auto"
    tried = []

    def fits(config):  # fits only once each row's tokens are split over 2 chips (models/context_parallel.py)
        tried.append((config.mesh.get("context", 1), config.grad_accum_steps))
        return config.mesh.get("context", 1) == 2, "a row's activations"

    said = sizing.search(c, 8, fits, tpu=True)
    # 32 rows: 4 micro-batches of one row a chip on 8 chips, then 8 of one row over each pair of chips
    assert tried[-2:] == [(1, 4), (2, 8)] and (c.mesh.data, c.mesh.fsdp, c.mesh.tensor) == (1, -1, 1)
    assert said[-2:] == ["scan_layers=True (the step needed a row's activations)",
                         "mesh.context=2, grad_accum_steps=8 (the step needed a row's activations)"]
    assert c.scan_layers
    rungs = sizing.ladder(load_config("lma", "paper"), 8)
    assert rungs[-4:] == [("mesh.context", 2), ("mesh.context", 4), ("mesh.context", 8),
                          ("mesh.weights_over_context", True)]  # the last: the row's chips share the weights
    c = load_config("lma", "paper")
    c.data.buckets = (10_240, 12_289)  # a length that does not split in two: no such rung
    assert not {"mesh.context", "mesh.weights_over_context"} & {field for field, _ in sizing.ladder(c, 8)}


def test_the_sizing_table_row_of_the_chip_is_applied_and_said(monkeypatch, capsys):
    from liteframe_jax.train import sizing
    monkeypatch.setitem(sizing.TABLE, ("ctd", "paper"), {"v5e": {"rows_per_chip": 2, "mesh.fsdp": 2}})
    c = load_config("ctd", "paper")
    device = type("Device", (), {"device_kind": "TPU v5 lite"})()
    sizing.apply(c, [device] * 8)  # 256 clips, 2 a chip on 8 chips: 16 micro-batches
    assert (c.grad_accum_steps, c.mesh.fsdp) == (16, 2)
    assert "v5e: mesh.fsdp=2 (was 1), grad_accum_steps=16 (was 1)" in capsys.readouterr().out
    c = load_config("ctd", "paper")
    c.batch_size = 96
    sizing.apply(c, [device] * 16)  # 96 over 16 chips, at most 2 a chip: 3 micro-batches of 32
    assert c.grad_accum_steps == 3
    c = load_config("ctd", "paper")
    c.sizing = "off"
    sizing.apply(c, [device] * 8)
    assert c.grad_accum_steps == 1
    c = load_config("lma", "paper")  # the table's own row: each row over 2 of the 8 chips, one a micro-batch
    sizing.apply(c, [type("Device", (), {"device_kind": "TPU v6 lite"})()] * 8)
    assert (c.mesh.context, c.mesh.fsdp, c.grad_accum_steps, c.remat) == (2, -1, 8, "full")
    c = load_config("lma", "paper")  # v5e: each row over all 8 chips of a host, which share the weights too
    sizing.apply(c, [type("Device", (), {"device_kind": "TPU v5 lite"})()] * 8)
    assert (c.mesh.context, c.mesh.weights_over_context, c.scan_layers, c.grad_accum_steps) == (8, True, True, 32)
    c = load_config("lma", "paper")  # one H100: one row a step, the LLM's layers as a loop
    sizing.apply(c, [type("Device", (), {"device_kind": "NVIDIA H100 80GB HBM3"})()])
    assert (c.grad_accum_steps, c.remat, c.scan_layers, c.encoder_clips_per_pass) == (32, "full", True, 8)


def test_the_encoder_a_few_clips_a_pass_gives_the_same_tokens_and_gradients():
    from flax import nnx
    from liteframe_jax.train.lma import LMATask
    c = load_config("lma", "demo")
    c.student.init, c.data.num_frames, c.mesh.num_devices = "random", 24, 1  # 3 clips of 8 frames
    # the demo student at one block a stage and 32 px: the passes' bookkeeping is what is tested, not the size
    c.student.arch.update(image_size=32, stages=((1, (2, 2, 2)), (1, (1, 1, 1))))
    c.llm.arch.num_layers = 1
    task = LMATask(c, sharding.make_mesh(c.mesh), "/tmp/unused", with_data=False)
    graphdef, state = nnx.split(task.build_model(nnx.Rngs(0)))
    s = task.spec.encoder.image_size
    frames = jax.random.randint(jax.random.key(1), (2, 24, s, s, 3), 0, 256).astype(jnp.uint8)
    encode = lambda st, n: task.spec.visual_tokens(nnx.merge(graphdef, st), frames, jnp.float32, n)
    whole, passes = jax.jit(encode, static_argnums=1)(state, 0), jax.jit(encode, static_argnums=1)(state, 1)
    assert whole.shape == (2, task.spec.num_visual_tokens, task.spec.llm.hidden_size)
    np.testing.assert_allclose(passes, whole, rtol=1e-5, atol=1e-5)
    weights = jax.random.normal(jax.random.key(2), whole.shape)  # each token's place matters
    grad = jax.jit(jax.grad(lambda st, n: (encode(st, n) * weights).sum()), static_argnums=1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), grad(state, 0), grad(state, 1))
    with pytest.raises(ValueError, match="does not divide the 3 clips"):
        encode(state, 2)
