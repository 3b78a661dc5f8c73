"""`bench latency` end to end at tiny sizes on a CPU (the models' `tiny` presets): every stage timed through
`Answerer`'s own encode and prefill, frame decoding included, the ratio column against InternVL3 at its most
frames, the plot written; a wrong video path named; a request streamed piece by piece as NVDEC's are."""

import json

import pytest

from liteframe_jax.assembly.answering import Answerer
from liteframe_jax.bench.__main__ import main
from liteframe_jax.data import video


def _recorded(monkeypatch, name: str) -> list:
    """Every result of `Answerer.<name>` from now on, in order."""
    seen, method = [], getattr(Answerer, name)

    def wrapper(self, *args, **kwargs):
        seen.append(method(self, *args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(Answerer, name, wrapper)
    return seen


def test_latency_with_decoding(tmp_path, monkeypatch):
    # a video of our own: the generated one goes with the bench's temporary files when the command ends
    from liteframe_jax.bench.pipeline import synthetic_video
    path = synthetic_video(str(tmp_path), 12, small=True)
    out = tmp_path / "lat" / "latency.json"
    encoded, answered = _recorded(monkeypatch, "encode_stream"), _recorded(monkeypatch, "token_ids")
    main(["latency", "--small", "--attention", "xla", "--decode", path, "--decode-workers", "2", "--out", str(out)])
    video_row, *rows = json.loads(out.read_text())["rows"]
    # the times are the Answerer's: one untimed call that compiles, then `runs` timed ones, per stage and row;
    # each row's visual tokens and first token are what its encode and its prefill gave
    calls = [1 + r["runs"] for r in rows]
    assert len(encoded) == len(answered) == sum(calls)
    ends = [sum(calls[:i + 1]) - 1 for i in range(len(rows))]
    assert [encoded[e].shape[1] for e in ends] == [r["visual_tokens"] for r in rows]
    assert [answered[e][0][0] for e in ends] == [r["first_token"] for r in rows]
    assert video_row["bench"] == "latency_video" and video_row["decode_workers"] == 2
    assert video_row["path"] == path and video_row["keyframes"] == len(video.keyframe_indices(path)) > 1
    assert {r["model"] for r in rows} == {"InternVL3-8B-style", "InternVL3-8B-style + WAP 16x", "LiteFrame",
                                          "LiteFrame (paper_tubelet2)"}
    for r in rows:
        assert "error" not in r, r
        assert r["decode_ms"] > 0 and r["encode_ms"] > 0 and r["prefill_ms"] > 0
        # an evaluation-shaped prompt: the visual tokens, their separators and a Video-MME question around them
        assert r["prompt_tokens"] == r["visual_tokens"] + r["text_tokens"] and r["text_tokens"] > 60
        assert r["keyframes_distinct"] <= video_row["keyframes"] and r["keyframes_decode_ms"] > 0
        assert 0 < r["frames_decoded"] <= video_row["video_frames"]
        assert r["ttft_ms"] == pytest.approx(r["encode_ms"] + r["prefill_ms"])
        assert r["ttft_with_decode_ms"] == pytest.approx(r["decode_ms"] + r["ttft_ms"])
        per_frame = {"InternVL3-8B-style": 4, "InternVL3-8B-style + WAP 16x": 0.25}.get(r["model"], 1)
        assert r["visual_tokens"] == r["frames"] * per_frame
        # one separator per frame (InternVL3), per pooled group of 4 frames (WAP 16x) or per temporal slice of
        # a student's clip (8 frames -> 2 slices), each a few tokens: the question is the rest
        frames_per_group = 1 if r["model"] == "InternVL3-8B-style" else 4
        assert r["visual_groups"] == r["frames"] // frames_per_group
        assert r["text_tokens"] < 300 + 12 * r["visual_groups"]
    ref = next(r for r in rows if r["model"] == "InternVL3-8B-style")
    assert ref["ttft_vs_internvl_max_frames"] == 1.0
    assert (tmp_path / "lat" / "latency.png").stat().st_size > 10_000
    assert (tmp_path / "lat" / "latency_stages.png").stat().st_size > 10_000


def test_latency_with_a_missing_video_names_it(tmp_path):
    with pytest.raises(video.VideoError, match="nowhere.mp4"):
        main(["latency", "--small", "--attention", "xla", "--decode", str(tmp_path / "nowhere.mp4")])


def test_rows_are_written_as_they_come(tmp_path, monkeypatch):
    """A run stopped part way (a time limit, a crash) keeps the rows it measured in --out."""
    from liteframe_jax.bench import __main__ as bench_main
    first = {"bench": "latency", "model": "InternVL3-8B-style", "frames": 4, "error": "stand-in row"}

    def stopped(*args, **kwargs):
        yield first
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_main, "bench_latency", stopped)
    out = tmp_path / "lat" / "latency.json"
    with pytest.raises(KeyboardInterrupt):
        main(["latency", "--small", "--attention", "xla", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == [first]


def test_a_streamed_request_is_timed_through_the_answerer(tmp_path, monkeypatch):
    """`eval.latency.time_streamed`, which the bench runs on NVDEC's pieces, here on PyAV's: every run decodes
    the request again and encodes its pieces as they come; the prefill gets the whole video's tokens."""
    import dataclasses

    from liteframe_jax.bench import eval_prompt, latency_models
    from liteframe_jax.bench.common import BF16
    from liteframe_jax.bench.pipeline import synthetic_video
    from liteframe_jax.data import sampling
    from liteframe_jax.eval.answer import stream_piece
    from liteframe_jax.eval.latency import time_streamed

    spec = dataclasses.replace(latency_models.latency_specs(small=True)[latency_models.LITEFRAME], num_frames=16)
    graphdef, params = latency_models.build_models({"m": spec}, attn_impl=None, mlp_kernel="xla")["m"]
    answerer = Answerer(spec, eval_prompt.PieceTokenizer(), graphdef, BF16)
    path = synthetic_video(str(tmp_path), 4, small=True)
    idx = sampling.uniform_indices(video.probe(path).num_frames, spec.num_frames)
    chunk = stream_piece(latency_models.whole_frames(spec))
    assert chunk == 8 and spec.num_frames // chunk == 2
    requests, pieces = [], []

    def stream():
        requests.append(len(pieces))
        for piece in video.stream_frames(path, idx, spec.encoder.image_size, chunk):
            pieces.append(piece.shape)
            yield piece

    encoded, answered = _recorded(monkeypatch, "encode_stream"), _recorded(monkeypatch, "token_ids")
    ids = eval_prompt.request_ids(spec.separators, spec.visual_groups, spec.tokens_per_group)
    ms = time_streamed(answerer, params, stream, ids, runs=2)
    assert ms > 0 and requests == [0, 2, 4] and pieces == [(8, 56, 56, 3)] * 6
    assert [v.shape for v in encoded] == [(1, spec.num_visual_tokens, spec.llm.hidden_size)] * 3
    assert len(answered) == 3 and all(len(a[0]) == 1 for a in answered)
