"""Time to first token of one request, run as answering runs it (`eval.answer.VideoQA` and its `Answerer`):
the sampled frames decoded from the file, encoded into visual tokens, then the prompt's prefill and its
first token, each stage timed alone on the model's device (the median of `runs` after one untimed run that
compiles). The paper's latency is encoding + prefill (`ttft_ms`); `ttft_with_decode_ms` adds decoding."""

from __future__ import annotations

import statistics
import time


def _median_ms(fn, runs: int):
    """(median milliseconds of `runs` calls after a first untimed one, the last call's result)."""
    out = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, out


def time_to_first_token(model, video_path: str, prompt, runs: int = 3) -> dict:
    """The stages of one request for `model` (a one-device `VideoQA`) about `video_path`, asked `prompt`."""
    if runs < 1:
        raise ValueError(f"latency_runs={runs}: time each stage at least once")
    if model.device_count != 1:
        raise ValueError(f"time to first token is one request on one device; the model answers on "
                         f"{model.device_count} (take model.on_devices(devices[:1]))")
    decode_ms, (frames, times) = _median_ms(lambda: model.load_frames(video_path), runs)
    ids = model.prompt_ids(prompt, times)
    answerer, params = model.answerer, model.params
    encode_ms, visual = _median_ms(lambda: answerer.encode_stream(params, [frames]).block_until_ready(), runs)
    prefill_ms, first = _median_ms(
        lambda: answerer.token_ids(params, [ids], None, visual=visual, max_new_tokens=1), runs)
    device = visual.devices().pop()
    return {"frames": model.num_frames, "visual_tokens": model.visual_tokens, "prompt_tokens": len(ids),
            "decode_ms": decode_ms, "encode_ms": encode_ms, "prefill_ms": prefill_ms,
            "ttft_ms": encode_ms + prefill_ms, "ttft_with_decode_ms": decode_ms + encode_ms + prefill_ms,
            "first_token": first[0][0], "runs": runs, "decoder": model.decoder, "video": video_path,
            "device": device.device_kind, "platform": device.platform}
