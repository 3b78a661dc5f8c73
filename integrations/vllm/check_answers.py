"""Run in vLLM's environment: `python check_answers.py OUT_JSON HF_FOLDER QUESTION MAX_NEW_TOKENS VIDEO...` writes
to OUT_JSON (vLLM logs to stdout) each video's greedy answer (token ids) from

- `vllm`: `vllm.LLM(folder).generate` given the video's frames (all of them, decoded with OpenCV);
- `vllm_chat`: `vllm.LLM(folder).chat` given the file as a `video_url` (vLLM's loader, the plugin's frame rule);
- `transformers`: the folder's `AutoProcessor` and `AutoModelForImageTextToText` given the same frames as `vllm`;

and the prompt ids of vLLM and of transformers' processor. tests/test_vllm_serving.py compares them.
"""

import json
import sys

import cv2
import numpy as np


def all_frames(path: str) -> np.ndarray:
    capture, frames = cv2.VideoCapture(path), []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(bgr[..., ::-1])
    return np.ascontiguousarray(np.stack(frames))


def main() -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from vllm import LLM, SamplingParams

    out_json, folder, question, max_new = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    videos = sys.argv[5:]
    frames = [all_frames(v) for v in videos]
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)

    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True, dtype=torch.float32)
    hf, hf_prompts = [], []
    for f in frames:
        inputs = processor(text=text, videos=torch.from_numpy(f), return_tensors="pt")
        out = model.generate(**inputs, max_new_tokens=max_new, do_sample=False)
        hf.append(out[0, inputs["input_ids"].shape[1]:].tolist())
        hf_prompts.append(inputs["input_ids"][0].tolist())
    del model

    # the CPU build reserves --gpu-memory-utilization of the host's memory for its KV cache: a small share
    llm = LLM(folder, trust_remote_code=True, dtype="float32", max_model_len=512, max_num_seqs=2,
              enforce_eager=True, gpu_memory_utilization=0.1, allowed_local_media_path="/")
    greedy = SamplingParams(temperature=0, max_tokens=max_new)
    outs = llm.generate([{"prompt": text, "multi_modal_data": {"video": f}} for f in frames], greedy)
    chats = [llm.chat([{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{v}"}},
                                                    {"type": "text", "text": question}]}], greedy)[0]
             for v in videos]
    with open(out_json, "w") as f:
        json.dump({"vllm": [list(o.outputs[0].token_ids) for o in outs],
                   "vllm_chat": [list(o.outputs[0].token_ids) for o in chats],
                   "transformers": hf, "vllm_prompts": [list(o.prompt_token_ids) for o in outs],
                   "vllm_chat_prompts": [list(o.prompt_token_ids) for o in chats],
                   "transformers_prompts": hf_prompts}, f)


if __name__ == "__main__":  # vLLM starts its engine in spawned processes, which import this file
    main()
