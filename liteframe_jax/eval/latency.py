"""Time to first token of one request, run as answering runs it (`eval.answer.VideoQA` and its `Answerer`):
the sampled frames decoded from the file, encoded into visual tokens, then the prompt's prefill and its
first token, each stage timed alone on the model's device (the median of `runs` after one untimed run that
compiles). The paper's latency is encoding + prefill (`ttft_ms`); `ttft_with_decode_ms` adds decoding.

`time_answering` (encode + prefill of frames already decoded, `time_encode` alone) and `time_streamed` (a
request whose frames are encoded piece by piece as they decode) are the same timing for callers that decode
on their own terms, such as `bench latency`.
"""

from __future__ import annotations

import statistics
import time


def _median_ms(fn, runs: int):
    """(median milliseconds of `runs` calls after a first untimed one, the last call's result)."""
    if runs < 1:
        raise ValueError(f"latency_runs={runs}: time each stage at least once")
    out = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, out


def time_encode(answerer, params, frames, runs: int = 3):
    """(milliseconds, visual tokens): `answerer.encode_stream` of one request's uint8 `frames` (n, S, S, 3)
    given as one piece."""
    return _median_ms(lambda: answerer.encode_stream(params, [frames]).block_until_ready(), runs)


def time_answering(answerer, params, frames, ids, runs: int = 3) -> dict:
    """One request's stages after decoding: `time_encode`, then `answerer.token_ids` of its prompt `ids` with
    those visual tokens and one new token (the prefill and the first token, as `VideoQA` answers a streamed
    request). `visual` is the encoder's output."""
    encode_ms, visual = time_encode(answerer, params, frames, runs)
    prefill_ms, first = _median_ms(
        lambda: answerer.token_ids(params, [ids], None, visual=visual, max_new_tokens=1), runs)
    return {"encode_ms": encode_ms, "prefill_ms": prefill_ms, "ttft_ms": encode_ms + prefill_ms,
            "first_token": first[0][0], "visual": visual}


def time_streamed(answerer, params, pieces, ids, runs: int = 3) -> float:
    """Milliseconds from the first frame's decoding to the first token when `pieces()` (a fresh iterator of
    uint8 pieces of whole clips each call, e.g. `nvdec.stream_frames`) is encoded as it decodes
    (`VideoQA.encode_streaming`), then the prefill: the median of `runs` after one untimed run."""
    def request():
        visual = answerer.encode_stream(params, pieces())
        return answerer.token_ids(params, [ids], None, visual=visual, max_new_tokens=1)
    return _median_ms(request, runs)[0]


def time_to_first_token(model, video_path: str, prompt, runs: int = 3) -> dict:
    """The stages of one request for `model` (a one-device `VideoQA`) about `video_path`, asked `prompt`."""
    if runs < 1:
        raise ValueError(f"latency_runs={runs}: time each stage at least once")
    if model.device_count != 1:
        raise ValueError(f"time to first token is one request on one device; the model answers on "
                         f"{model.device_count} (take model.on_devices(devices[:1]))")
    decode_ms, (frames, times) = _median_ms(lambda: model.load_frames(video_path), runs)
    ids = model.prompt_ids(prompt, times)
    stages = time_answering(model.answerer, model.params, frames, ids, runs)
    visual = stages.pop("visual")
    device = visual.devices().pop()
    return {"frames": model.num_frames, "visual_tokens": model.visual_tokens, "prompt_tokens": len(ids),
            "decode_ms": decode_ms, **stages, "ttft_with_decode_ms": decode_ms + stages["ttft_ms"], "runs": runs,
            "decoder": model.decoder, "video": video_path, "device": device.device_kind, "platform": device.platform}
