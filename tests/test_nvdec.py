"""Decoding on the GPU's video engines (data/nvdec.py): the choice between decoders, and on a GPU with
PyNvVideoCodec, frames that match PyAV's and the same frames streamed piece by piece. The suite runs on the
CPU (conftest.py); on a GPU host: JAX_PLATFORMS=cuda python -m pytest tests/test_nvdec.py"""

import numpy as np
import pytest

from liteframe_jax.data import demo, nvdec, video

NO_NVDEC = nvdec.problem()


@pytest.mark.skipif(NO_NVDEC is None, reason="NVDEC can run here: the refusal is for machines without it")
def test_the_choice_of_decoder_says_why_and_an_impossible_nvdec_is_an_error():
    assert nvdec.choose("pyav") == ("pyav", "asked for")
    picked, why = nvdec.choose("auto")
    assert picked == "pyav" and why == f"auto: {NO_NVDEC}"
    with pytest.raises(ValueError, match=r"decoder='nvdec' cannot run here: .*(not installed|not a GPU)"):
        nvdec.choose("nvdec")
    with pytest.raises(ValueError, match="unknown decoder 'gpu'"):
        nvdec.choose("gpu")


@pytest.mark.parametrize("frames", [1, 5, 16, 32, 64, 100, 512])
def test_frames_decoded_at_once_are_shared_evenly_between_sessions(frames):
    chunk = nvdec.balanced_piece(frames, nvdec.SESSIONS)
    pieces = [min(chunk, frames - s) for s in range(0, frames, chunk)]
    shares = nvdec.deal(len(pieces), nvdec.SESSIONS)
    assert 1 <= chunk <= 8 and sorted(p for share in shares for p in share) == list(range(len(pieces)))
    loads = [sum(pieces[p] for p in share) for share in shares]
    # no session has more than one frame per round over an even share (fixed pieces of 8 would give one of 7
    # sessions 16 of 64 frames, or 8 of 16)
    rounds = max(len(share) for share in shares)
    assert max(loads) < frames / nvdec.SESSIONS + rounds
    assert all(share == sorted(share) for share in shares)  # each session's pieces in order


@pytest.mark.skipif(NO_NVDEC is not None, reason=f"needs NVDEC: {NO_NVDEC}")
def test_nvdec_frames_match_pyav_and_stream_in_order(tmp_path):
    rng = np.random.default_rng(0)
    frames = demo.render(demo.random_shapes(rng, 3), 240, 640, 360) + rng.integers(0, 16, (360, 640, 3), np.uint8)
    path = demo.write_video(str(tmp_path / "v.mp4"), frames, fps=24, keyframe_every=48)
    n = video.probe(path).num_frames
    assert nvdec.choose("auto") == ("nvdec", "auto: PyNvVideoCodec and a GPU are here")
    for indices in ([0, 3, 3, 60, 61, 150, 230, 239], list(range(0, 240, 15)), [100, 200, 239, 300, 400]):
        ours = np.asarray(nvdec.decode_frames(path, indices, 64, n, sessions=3))
        ref = video.decode_frames(path, indices, 64).astype(np.float32)
        assert ours.shape == ref.shape and ours.dtype == np.uint8
        assert np.abs(ours - ref).mean() < 4.0, np.abs(ours - ref).mean()  # colour conversion and resize differ
        pieces = list(nvdec.stream_frames(path, indices, 64, n, chunk=2, sessions=3))
        assert all(len(p) % 2 == 0 for p in pieces[:-1])
        np.testing.assert_array_equal(np.concatenate([np.asarray(p) for p in pieces]), ours)
