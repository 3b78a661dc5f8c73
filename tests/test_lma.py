"""LMA on CPU: answer-only loss, trainable-set selection, LoRA, resume, 1 vs 8 devices, accuracy above chance."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import REPO, tiny_ctd_config, tiny_lma_config

from liteframe_jax.assembly import run_folder
from liteframe_jax.core import checkpoint, sharding
from liteframe_jax.core.run_dir import RunDir
from liteframe_jax.core.tree import flatten, pure_dict
from liteframe_jax.data import conversations, demo, nvdec, qa_demo
from liteframe_jax.jobs import train as run
from liteframe_jax.models.pixels import normalise
from liteframe_jax.train.lma import LMATask


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qa")
    return qa_demo.make_qa_set(str(folder), num_train=96, num_eval=32)


def _initial_params(task, seed=0):
    return jax.jit(lambda k: pure_dict(nnx.state(task.build_model(nnx.Rngs(k)))))(jax.random.key(seed))


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_loss_counts_answer_tokens_only(qa, tmp_path):
    cfg = tiny_lma_config(qa[0])
    task = LMATask(cfg, sharding.make_mesh(cfg.mesh), str(tmp_path))
    model = task.build_model(nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in next(iter(task.train_dataset())).items()}
    loss, aux = task.loss(model, batch, None, None)
    tokens, mask = np.asarray(batch["tokens"]), np.asarray(batch["loss_mask"])
    h, _ = model.llm.hidden(task.spec.embeds(model, batch["tokens"], batch["frames"], task.dtype),
                            jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape), batch["valid"])
    logp = np.asarray(jax.nn.log_softmax(model.llm.logits(h), -1))
    picked = [-logp[b, t - 1, tokens[b, t]] for b, t in zip(*np.nonzero(mask[:, 1:])) for t in [t + 1]]
    np.testing.assert_allclose(float(loss), np.mean(picked), rtol=1e-5)
    assert float(aux["answer_tokens"]) == mask[:, 1:].sum() < 0.2 * batch["valid"].sum()
    # Changing a prompt token's label-side value outside the answers leaves the loss's targets alone.
    changed = dict(batch, loss_mask=batch["loss_mask"].at[:, :5].set(False))
    assert float(task.loss(model, changed, None, None)[0]) == pytest.approx(float(loss), rel=1e-6)
    # logits are computed at max_answer_tokens positions per row; a row with more answer tokens is refused
    row = task.train_index.rows[0]
    ids, answer = task.builder.training_example(row.turns, [0.0] * task.builder.visual_groups)
    tight = dataclasses.replace(task.builder, max_answer_tokens=int(answer.sum()) - 1)
    with pytest.raises(conversations.TooLong, match="answer tokens"):
        tight.training_example(row.turns, [0.0] * task.builder.visual_groups)


def test_processes_pad_their_shares_of_a_batch_alike_and_a_failing_video_keeps_its_place(qa, tmp_path):
    """Each process pads its share of a global batch to the bucket of the whole batch (the token lengths are
    known ahead), so two processes build arrays of one shape; together they hold the one-process batch's rows.
    A video that fails to decode mid-run stays in its place as a row with no loss."""
    from liteframe_jax.data import pipeline
    cfg = tiny_lma_config(qa[0], **{"data.buckets": (160, 256)})
    task = LMATask(cfg, sharding.make_mesh(cfg.mesh), str(tmp_path))
    index, example = task.train_index, task._example(task.train_index)

    def batches(rows, process_index, process_count, n=12):  # global batches of 2 rows: both buckets occur
        it = iter(pipeline.qa_train_dataset(
            rows, index.token_lengths, example, batch_size=2 // process_count, buckets=(160, 256),
            pad_id=task.tokenizer.pad_id, seed=0, process_index=process_index, process_count=process_count))
        return [next(it) for _ in range(n)]

    one, first, second = batches(index.rows, 0, 1), batches(index.rows, 0, 2), batches(index.rows, 1, 2)
    lengths = {b["tokens"].shape[1] for b in one}
    assert lengths == {160, 256}  # both buckets occur, so a process padding on its own would disagree
    for whole, a, b in zip(one, first, second):
        assert a["tokens"].shape == b["tokens"].shape == (1, whole["tokens"].shape[1])
        rows = lambda *bs: sorted(tuple(r[v]) for x in bs for r, v in zip(x["tokens"], x["valid"]))
        assert rows(a, b) == rows(whole)
        assert whole["tokens"].shape[1] == pipeline.bucket_length(int(whole["valid"].sum(1).max()), (160, 256))

    import grain
    broken = index.rows[grain.MapDataset.source(range(len(index.rows))).shuffle(seed=0)[0]]  # the first row read
    shutil.copy(broken.video, tmp_path / "kept.mp4")
    with open(broken.video, "r+b") as f:  # corrupted after the index was built
        f.truncate(200)
    try:
        again = batches(index.rows, 0, 1)
    finally:
        shutil.copy(tmp_path / "kept.mp4", broken.video)
    lost_rows = 0
    for before, after in zip(one, again):
        assert after["tokens"].shape == before["tokens"].shape
        lost = np.flatnonzero(after["valid"].sum(1) != before["valid"].sum(1))
        lost_rows += len(lost)
        for i in lost:  # every row of the broken video became a one-token row without loss, in its place
            assert after["valid"][i].sum() == 1 and not after["loss_mask"][i].any() and not after["frames"][i].any()
        kept = np.setdiff1d(np.arange(2), lost)
        np.testing.assert_array_equal(after["tokens"][kept], before["tokens"][kept])
    assert lost_rows >= 1


def test_frozen_parts_stay_bit_identical(qa, tmp_path):
    cfg = tiny_lma_config(qa[0], **{"train.trainable": "projector"})
    result, task = run(cfg, str(tmp_path))
    before, after = flatten(jax.device_get(_initial_params(task))), flatten(jax.device_get(result.params))
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert changed and all(k.startswith("projector/") for k in changed)
    saved, _ = checkpoint.restore_params(str(tmp_path))
    assert set(saved) == {"projector"}  # frozen parts are neither optimised nor saved with the state...
    frozen = checkpoint.read_tree(checkpoint.frozen_dir(str(tmp_path)))
    assert set(frozen) == {"encoder", "llm"}  # ...but written once, so the run folder holds the whole model
    for k, v in flatten(frozen).items():
        np.testing.assert_array_equal(v, after[k])


def test_lora_trains_adapters_and_projector_only(qa, tmp_path):
    cfg = tiny_lma_config(qa[0], **{"train.trainable": "projector+lora", "llm.lora.rank": 4,
                                    "llm.lora.targets": "q|v"})
    result, task = run(cfg, str(tmp_path))
    before, after = flatten(jax.device_get(_initial_params(task))), flatten(jax.device_get(result.params))
    changed = {k for k in before if not np.array_equal(before[k], after[k])}
    assert any("/lora_b" in k for k in changed) and any(k.startswith("projector/") for k in changed)
    assert all(k.startswith("projector/") or "/lora_" in k for k in changed)
    assert not any("attn/k/lora" in k for k in before)  # only the targeted projections carry adapters


def _lma_cli(workdir, train, total_steps):
    """`tiny_lma_config(train)` with {"optimizer.decay_steps": 10} as a command, checkpoints written
    asynchronously every 2 steps."""
    return [sys.executable, "-m", "liteframe_jax.main", "--config=configs/lma.py", f"--workdir={workdir}",
            "--config.student.init=random", f"--config.data.train={train}", "--config.mesh.num_devices=1",
            "--config.eval_at_start=False", "--config.eval_every=0", "--config.log_every=1",
            "--config.batch_size=8", "--config.eval_batch_size=16", "--config.data.buckets=(256,)",
            "--config.optimizer.decay_steps=10", "--config.checkpoint_every=2", "--config.async_checkpointing=True",
            f"--config.total_steps={total_steps}"]


def test_preempted_and_killed_run_resumes_bit_identical(qa, tmp_path, monkeypatch):
    """A SIGTERM during step 2 (a preemption notice): the run stops after it with a checkpoint of step 2. Then,
    as its own process, it is killed with kill -9 while an asynchronous checkpoint is being written and at a
    seeded random moment; each time the same command continues, to the parameters of a run never
    interrupted."""
    import time

    from liteframe_jax.train import step as step_lib
    compile_step = step_lib.compile_train_step

    def signalling_step(*args, **kwargs):
        compiled, calls = compile_step(*args, **kwargs), []

        def step_fn(*step_args):
            calls.append(1)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return compiled(*step_args)
        step_fn.compile_seconds, step_fn.memory_report = compiled.compile_seconds, compiled.memory_report
        step_fn.memory, step_fn.step_gib = compiled.memory, compiled.step_gib
        return step_fn

    opts = {"optimizer.decay_steps": 10}
    split = tmp_path / "split"
    with monkeypatch.context() as patch:
        patch.setattr(step_lib, "compile_train_step", signalling_step)
        stopped, _ = run(tiny_lma_config(qa[0], total_steps=4, **opts), str(split))
    assert stopped.preempted and stopped.step == 2
    latest = lambda: checkpoint.Checkpointer(str(split), keep=2).latest_step()
    assert latest() == 2

    def writing() -> bool:
        return any(".orbax-checkpoint-tmp" in n for n in os.listdir(split / "checkpoints"))

    def logged() -> int:
        try:
            return max(_losses(str(split)), default=0)
        except json.JSONDecodeError:  # a line being written
            return 0

    env = dict(os.environ, PYTHONPATH=REPO)  # the test's own devices: the same numerics as the runs in it
    rng, saved = np.random.default_rng(1), 2
    for kill_at in ("during a checkpoint write", "at a random moment"):
        seen = logged()
        proc = subprocess.Popen(_lma_cli(split, qa[0], 400), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        ready = writing if kill_at == "during a checkpoint write" else (lambda: logged() > seen)
        deadline = time.time() + 240
        while not ready():
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.time() < deadline, f"the run did not get to be killed {kill_at}"
            time.sleep(0.002)
        if kill_at == "at a random moment":
            time.sleep(rng.uniform(0.0, 2.0))
        proc.kill()
        proc.wait()
        if kill_at == "during a checkpoint write":
            assert writing(), "the write had finished before the kill"
        assert latest() >= saved, kill_at  # a half-written checkpoint is never taken for one
        saved = latest()

    total = saved + 2
    done = subprocess.run(_lma_cli(split, qa[0], total), cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    straight, _ = run(tiny_lma_config(qa[0], total_steps=total, **opts), str(tmp_path / "straight"))
    resumed, step = checkpoint.restore_params(str(split))
    assert step == total
    jax.tree.map(np.testing.assert_array_equal, resumed,
                 jax.device_get({k: v for k, v in straight.params.items() if k in resumed}))
    assert _losses(str(split))[total] == _losses(str(tmp_path / "straight"))[total]


def test_one_and_eight_devices_give_the_same_loss(qa, tmp_path):
    run(tiny_lma_config(qa[0], total_steps=2), str(tmp_path / "one"))
    run(tiny_lma_config(qa[0], total_steps=2, **{"mesh.num_devices": 8, "mesh.data": 4, "mesh.fsdp": 2}),
        str(tmp_path / "eight"))
    a, b = _losses(str(tmp_path / "one")), _losses(str(tmp_path / "eight"))
    for step in (1, 2):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    # the run saved from eight devices exports from a process with one, as a user on a laptop would
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-m", "liteframe_jax.export", "--run", str(tmp_path / "eight"), "--out",
                          str(tmp_path / "exported")], capture_output=True, text=True, env=env, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    from liteframe_jax.pytorch.weights import read_folder
    exported = read_folder(str(tmp_path / "exported" / "llm"))
    _, _, _, params, _ = run_folder.load_model(str(tmp_path / "eight"))
    np.testing.assert_array_equal(exported["model.embed_tokens.weight"].numpy(), params["llm"]["embed"])


def test_demo_answers_clearly_above_chance_and_generate_cli(qa, tmp_path):
    # what the demo trains: the LLM and the projector on a frozen student (a random one here)
    cfg = tiny_lma_config(qa[0], qa[1], total_steps=200, log_every=25, checkpoint_every=200, batch_size=16)
    result, task = run(cfg, str(tmp_path))
    print("held-out accuracy", {k: round(v, 3) for k, v in result.eval.items() if k.count("_") <= 1})
    for fmt in ("open", "mc"):  # open-ended and lettered questions about the same held-out clips
        assert result.eval[f"accuracy_{fmt}"] > result.eval[f"chance_{fmt}"] + 0.2, result.eval
    assert len(task.samples) == 64 and {"answer", "gold", "correct", "format"} <= set(task.samples[0])
    from liteframe_jax.eval.answer import VideoQA
    qa_model = VideoQA.from_run(str(tmp_path))
    row = task.eval_index.rows[0]
    answer = qa_model(row.video, row.turns[0][1], max_new_tokens=8)
    assert answer == task.samples[0]["answer"]
    # The benchmark harness end to end on the demo's multiple-choice questions, with the same model.
    from helpers import load_config

    from liteframe_jax.eval import harness
    cfg_eval = load_config("eval", "demo")
    cfg_eval.data.root = os.path.dirname(qa[0])
    summary = harness.evaluate(cfg_eval, str(tmp_path / "eval"), qa_model)
    assert summary["questions"] == 32 and summary["errors"] == 0 and summary["parse_failures"] == 0
    rows = harness.read_done(str(tmp_path / "eval" / "results.jsonl"))
    assert len(rows) == 32 and all(r["frames"] == 8 and r["visual_tokens"] == 64 for r in rows.values())
    # the harness and LMA's own held-out evaluation read the same lettered questions the same way
    lma_mc = {s["id"][:-len("_mc")]: s["correct"] for s in task.samples if s["format"] == "mc"}
    agree = sum(lma_mc[i] == r["correct"] for i, r in rows.items())
    assert agree >= 31 and abs(summary["overall"] - result.eval["accuracy_mc"]) <= 1 / 32
    # a protocol's system prompt and answer start reach the chat template (MLVU's authors' protocol)
    from liteframe_jax.data.benchmarks import MCQuestion
    from liteframe_jax.eval import prompts
    q = MCQuestion("m", row.video, "What colour is the shape?", ("red", "blue"), "A")
    ids = qa_model._prompt(prompts.protocol("mlvu", "official").render(q), [0.0] * 4)
    text = qa_model.tokenizer.decode(ids, skip_special=False)
    assert text.startswith("<|im_start|>system\nCarefully watch this video")
    assert text.endswith("(B) blue\nOnly give the best option.<|im_end|>\n<|im_start|>assistant\nBest option:(")
    # `--config.model.mlp_kernel` replaces the run's own choice: the fused kernels are refused here (float32,
    # or no Hopper GPU) with the reason
    with pytest.raises(ValueError, match="kernel 'pallas' needs"):
        VideoQA.from_run(str(tmp_path), mlp_kernel="pallas")
    # the demo chain ends in PyTorch: exported, the model answers the same held-out question with the same words
    from liteframe_jax.export.__main__ import main as export_main
    from liteframe_jax.pytorch import LiteFrameVideoLLM
    exported = f"{tmp_path}_exported"
    assert export_main(["--run", str(tmp_path), "--out", exported]) == 0
    frames, times = qa_model.load_frames(row.video)
    torch_model = LiteFrameVideoLLM.from_pretrained(exported)
    assert torch_model.generate(frames, row.turns[0][1], times=times, max_new_tokens=8) == answer
    # and so does the export's Hugging Face folder, from the video file, where only transformers can load it
    from helpers import hf_folder_answers
    hf = hf_folder_answers(os.path.join(exported, "hf"), [row.video], row.turns[0][1], 8, tmp_path)
    assert hf["texts"] == [answer]


def test_run_folder_stands_alone_after_its_sources_are_gone(qa, tmp_path):
    """An LMA run on a CTD run's student: moved elsewhere with the CTD run deleted, it answers as before; a
    run folder without its frozen parts is an error, never a retraining."""
    from liteframe_jax.eval.answer import VideoQA
    ctd_dir, lma_dir = tmp_path / "ctd", tmp_path / "lma"
    videos = str(tmp_path / "videos")
    demo.make_demo_videos(videos, count=2, num_frames=16)
    run(tiny_ctd_config(videos, total_steps=1), str(ctd_dir))
    cfg = tiny_lma_config(qa[0], total_steps=2, **{"student.init": str(ctd_dir), "train.trainable": "projector"})
    run(cfg, str(lma_dir))
    spec = run_folder.read_spec(str(lma_dir))
    assert spec.encoder == run_folder.read_spec(str(ctd_dir))  # the CTD run's student, as its spec.json says
    row = LMATask(cfg, sharding.make_mesh(cfg.mesh), str(lma_dir)).train_index.rows[0]
    before = VideoQA.from_run(str(lma_dir))(row.video, "What colour is the shape?", max_new_tokens=4)

    moved = tmp_path / "elsewhere" / "lma"
    shutil.move(str(lma_dir), str(moved))
    shutil.rmtree(ctd_dir)
    assert VideoQA.from_run(str(moved))(row.video, "What colour is the shape?", max_new_tokens=4) == before

    shutil.rmtree(moved / "frozen")
    with pytest.raises(ValueError, match="neither the checkpoint nor frozen/"):
        VideoQA.from_run(str(moved))
    os.remove(moved / "spec.json")
    with pytest.raises(FileNotFoundError, match="written before run folders held their whole model"):
        VideoQA.from_run(str(moved))


def test_streamed_pieces_are_whole_clips_of_about_eight_frames():
    from liteframe_jax.eval.answer import stream_piece
    assert stream_piece(8) == 8 and stream_piece(1) == 8 and stream_piece(4) == 8  # student, InternVL3, WAP 4
    assert stream_piece(16) == 16 and stream_piece(3) == 6  # never part of a clip
    assert stream_piece(8, clips_per_call=2) == 16 and stream_piece(1, clips_per_call=1) == 1


@pytest.mark.parametrize("decoder", ["pyav", pytest.param("nvdec", marks=pytest.mark.skipif(
    nvdec.problem() is not None, reason=f"needs NVDEC: {nvdec.problem()}"))])
def test_streamed_encoding_gives_the_batch_encoded_visual_tokens_and_answer(qa, decoder):
    """Answering encodes the video clip by clip while it decodes: the visual tokens equal those of the whole
    video decoded and encoded at once, and so does the answer."""
    from liteframe_jax.eval.answer import VideoQA
    cfg = tiny_lma_config(qa[0], **{"data.num_frames": 16})  # two 8-frame clips of the student
    task = LMATask(cfg, sharding.make_mesh(cfg.mesh), "/nonexistent", with_data=False)
    graphdef, params = nnx.split(task.build_model(nnx.Rngs(0)))
    model = VideoQA(task.spec, task.tokenizer, graphdef, pure_dict(params), dtype=jnp.float32, sampling="uniform",
                    resize="bilinear", identity={}, decoder=decoder)
    path = conversations.build_index(qa[0]).rows[0].video
    assert task.spec.encoder.clip_frames == 8 and model.num_frames == 16
    streamed, times = model.encode_streaming(path)
    frames, batch_times = model.load_frames(path)
    whole = jax.jit(lambda p, f: task.spec.visual_tokens(nnx.merge(graphdef, p), f, jnp.float32))(
        model.params, jnp.asarray(frames)[None])
    assert times == batch_times
    assert streamed.shape == whole.shape == (1, model.visual_tokens, cfg.llm.arch.hidden_size)
    np.testing.assert_allclose(np.asarray(streamed), np.asarray(whole), rtol=1e-5, atol=1e-5)
    question = "What colour is the shape?"
    assert model(path, question, max_new_tokens=6) == model(path, question, max_new_tokens=6, stream=False)


def test_the_post_hoc_baseline_gives_the_llm_ctds_targets_and_keeps_its_teacher_frozen(qa, tmp_path):
    """encoder.kind=teacher: the CTD run's teacher on every frame, pooled as its targets are, where the student
    was; the LLM sees exactly the targets the student learnt to predict, and the teacher never trains."""
    from liteframe_jax.assembly.specs import PooledTowerSpec
    from liteframe_jax.train.ctd import CTDTask
    ctd_dir, lma_dir = tmp_path / "ctd", tmp_path / "lma"
    ctd_cfg = tiny_ctd_config(str(tmp_path / "videos"))
    # the baseline reads a CTD run's config.json alone (its teacher and compression), as a run writes it
    RunDir(str(ctd_dir)).write_config(ctd_cfg.to_json_best_effort(indent=2))
    cfg = tiny_lma_config(qa[0], total_steps=1, **{"student.init": str(ctd_dir), "encoder.kind": "teacher"})
    run(cfg, str(lma_dir))
    spec = run_folder.read_spec(str(lma_dir))
    assert isinstance(spec.encoder, PooledTowerSpec) and spec.encoder.window == tuple(ctd_cfg.compression.window)
    student = run_folder.read_spec(str(ctd_dir))
    assert spec.num_visual_tokens == 8 // student.clip_frames * int(np.prod(student.arch.output_grid))

    _, _, graphdef, params, _ = run_folder.load_model(str(lma_dir))  # the model as the run folder holds it
    ctd = CTDTask(ctd_cfg, sharding.make_mesh(ctd_cfg.mesh), str(ctd_dir), with_data=False)
    teacher, held = jax.device_get(ctd.frozen()[0]), flatten(jax.device_get(params))
    # the encoder's weights are the CTD run's teacher, bit for bit, after training (frozen)
    assert all(np.array_equal(held[f"encoder/tower/{k}"], v) for k, v in flatten(teacher).items())
    model = nnx.merge(graphdef, params)
    frames = np.random.default_rng(0).integers(0, 255, (2, 8, ctd.teacher_image_size, ctd.teacher_image_size, 3),
                                               np.uint8)
    x = normalise(jnp.asarray(frames), spec.encoder.pixel_mean, spec.encoder.pixel_std, jnp.float32)
    seen = model.encoder(x.reshape(-1, spec.encoder.clip_frames, *x.shape[2:]))  # clips in, as the LLM gets them
    np.testing.assert_allclose(np.asarray(seen).reshape(2, -1, seen.shape[-1]),
                               np.asarray(ctd.targets(ctd.frozen()[0], jnp.asarray(frames))), rtol=1e-5, atol=1e-5)
