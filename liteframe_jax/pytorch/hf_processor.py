"""The LiteFrame Video LLM's processor for transformers: `LiteFrameVideoProcessor` (frames as the model trained
on them) and `LiteFrameProcessor` (the prompt and its video placeholders, tokenised). Imports torch and
transformers; the export copies it into the Hugging Face folder as `processing_liteframe.py`, loaded through
`AutoProcessor.from_pretrained(folder, trust_remote_code=True)`.

Frames, as in training: `num_frames` sampled uniformly over the whole video (the middle frame of each of
`num_frames` equal segments, `int((i + 0.5) * N / num_frames)`), stretched to `size` x `size`, scaled to 0..1 and
normalised with the student's mean and std. From a path they are decoded with PyAV where it is installed (the
training pipeline's decoder and its swscale bilinear resize: the same frames, bit for bit), else with OpenCV
(whole frames, then a bilinear resize in torch: close to, not equal to, the trained frames; it decodes every
frame up to the last one sampled). Frames
given as an array (T, H, W, 3) uint8 are the whole video: sampled by the same rule and resized in torch.

The prompt: the chat template renders a message's video item as `<video>`; the processor replaces each
`<video>` with the block the model trained with (one placeholder token per visual token, grouped per temporal
slice, with the run's separators: frame numbers or timestamps).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from transformers import BatchFeature, PreTrainedTokenizerBase
from transformers.processing_utils import ProcessorMixin
from transformers.video_processing_utils import VideoProcessorMixin

VIDEO_MARKER = "<video>"


def uniform_indices(num_video_frames: int, num_frames: int) -> list[int]:
    """The middle frame of `num_frames` equal segments of the whole video (liteframe_jax/data/sampling.py)."""
    return [int((i + 0.5) * num_video_frames / num_frames) for i in range(num_frames)]


def video_block(layout: dict, times: list[float] | None = None) -> str:
    """The text that stands for one video: `tokens_per_group` placeholders per visual group, with separators
    ('none', 'frame', 'timestamp': `times` are each group's start in seconds, 'internvl')."""
    pad, groups = layout["video_token"] * layout["tokens_per_group"], layout["visual_groups"]
    separators = layout["separators"]
    if separators == "none":
        return pad * groups
    if separators == "frame":
        return "".join(f"Frame {g + 1}: {pad}\n" for g in range(groups))
    if separators == "timestamp":
        return "".join(f"{t:.1f}s: {pad}\n" for t in (times or [0.0] * groups))
    if separators == "internvl":
        return "\n".join(f"Frame{g + 1}: <img>{pad}</img>" for g in range(groups))
    raise ValueError(f"unknown separators {separators!r}")


def _decoder():
    """The function that decodes a path: PyAV's where it is installed, else OpenCV's. The imports sit in `try`
    blocks, which transformers' check of a remote-code file's imports leaves out: neither is required."""
    try:
        import av
        return lambda *args: _decode_pyav(av, *args)
    except ImportError:
        pass
    try:
        import cv2
        return lambda *args: _decode_opencv(cv2, *args)
    except ImportError:
        pass
    raise ImportError("decoding a video file needs PyAV (`pip install av`, the decoder the model trained with) or "
                      "OpenCV (`pip install opencv-python-headless`); or pass the frames as a uint8 (T, H, W, 3) "
                      "array")


# Between two wanted frames further apart than this, seek to the later one's keyframe instead of decoding every
# frame up to it (liteframe_jax/data/video.py's rule: a uniform sample of a long video is one frame in hundreds)
SEEK_GAP = 300


def _decode_pyav(av, path: str, num_frames: int, size: int):
    """(uint8 (num_frames, size, size, 3), the sampled indices, frames per second) as the training pipeline
    decodes: frames counted from the stream's header (or its packets where the container keeps no count),
    resized by swscale's bilinear filter."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        total = stream.frames
        if total <= 0:  # containers without a frame count (webm, mkv): count packets
            total = sum(1 for p in container.demux(stream) if p.size > 0)
            container.seek(0)
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        indices = uniform_indices(total, num_frames)
        stream.thread_type = "AUTO"
        got = _pyav_frames(container, stream, sorted(set(indices)), size)
    if not got:
        raise ValueError(f"{path!r}: no frame could be decoded")
    last = got[max(got)]  # a file whose data ends early repeats its last decoded frame, as training does
    return torch.stack([got.get(i, last) for i in indices]), indices, fps


def _pyav_frames(container, stream, wanted: list[int], size: int) -> dict:
    """{index: frame} for the `wanted` indices (sorted), numbered as the training pipeline numbers them: by
    timestamp where the stream has a constant rate and the first wanted frame is reached by a seek, else by
    position from the start."""
    rate, tb, start = stream.average_rate, stream.time_base, stream.start_time or 0
    resized = lambda frame: torch.from_numpy(frame.reformat(width=size, height=size, format="rgb24").to_ndarray())
    got, k, sought, wanted_set = {}, 0, None, set(wanted)
    if wanted[0] > 0 and rate and tb and stream.guessed_rate == rate:
        while k < len(wanted):
            sought = wanted[k]
            container.seek(start + int(sought / (rate * tb)), stream=stream, backward=True, any_frame=False)
            jumped = False
            for frame in container.decode(stream):
                if frame.pts is None:  # no timestamps after all: by position from the start, below
                    got, k = {}, -1
                    break
                i = int(round(float((frame.pts - start) * tb * rate)))
                if i in wanted_set and i not in got:
                    got[i] = resized(frame)
                while k < len(wanted) and wanted[k] <= i:
                    k += 1
                if k == len(wanted):
                    break
                # never twice for one frame: a seek may land further behind than the gap
                if wanted[k] - i >= SEEK_GAP and wanted[k] != sought:
                    jumped = True
                    break
            if k < 0 or not jumped:
                break
        if k >= 0:
            return got
        container.seek(0, stream=stream)
    for i, frame in enumerate(container.decode(stream)):
        if i in wanted_set:
            got[i] = resized(frame)
        if i >= wanted[-1]:
            break
    return got


def _decode_opencv(cv2, path: str, num_frames: int, size: int):
    """As `_decode_pyav`, through OpenCV (its wheel carries FFmpeg): whole frames in RGB, then `resize_frames`. The
    frame count is the container's (for webm / mkv an estimate from the duration)."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ValueError(f"{path!r}: OpenCV cannot open it")
    total, fps = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    indices = uniform_indices(max(total, 1), num_frames)
    wanted, got = set(indices), {}
    for i in range(indices[-1] + 1):
        if not capture.grab():
            break
        if i in wanted:
            ok, bgr = capture.retrieve()
            if ok:
                got[i] = torch.from_numpy(bgr[..., ::-1].copy())
    capture.release()
    if not got:
        raise ValueError(f"{path!r}: no frame could be decoded")
    last = got[max(got)]
    return resize_frames(torch.stack([got.get(i, last) for i in indices]), size), indices, fps


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (T, size, size, 3), bilinear with antialiasing when shrinking (as swscale's
    bilinear filter widens with the scale)."""
    if tuple(frames.shape[1:3]) == (size, size):
        return frames
    x = frames.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


class LiteFrameVideoProcessor(VideoProcessorMixin):
    """A video (a path, or uint8 frames (T, H, W, 3) of the whole video) -> `pixel_values_videos`
    (1, num_frames, 3, size, size) float32, normalised, and the start time of each visual group."""

    model_input_names = ["pixel_values_videos"]

    def __init__(self, num_frames: int = 8, size: int = 224, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                 visual_groups: int = 1, sampling: str = "uniform", resize: str = "bilinear", **kwargs):
        super().__init__(**kwargs)
        if sampling != "uniform":
            raise ValueError(f"frame sampling {sampling!r}: this processor samples 'uniform'")
        self.num_frames, self.size, self.visual_groups = int(num_frames), int(size), int(visual_groups)
        self.image_mean, self.image_std = list(image_mean), list(image_std)
        self.sampling, self.resize = sampling, resize

    def frames(self, video, fps: float | None = None):
        """(uint8 (num_frames, size, size, 3), start time in seconds of each visual group)."""
        if isinstance(video, str):
            frames, indices, file_fps = _decoder()(video, self.num_frames, self.size)
            fps = fps or file_fps
        else:
            video = torch.as_tensor(video)
            if video.dim() != 4 or video.shape[-1] != 3 or video.dtype != torch.uint8:
                raise ValueError(f"expected uint8 frames (T, H, W, 3), got {video.dtype} {tuple(video.shape)}")
            indices = uniform_indices(video.shape[0], self.num_frames)
            frames = resize_frames(video[indices], self.size)
        per_group = self.num_frames // self.visual_groups
        times = [indices[g * per_group] / (fps or 1.0) for g in range(self.visual_groups)]
        return frames, times

    def normalise(self, frames_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3) -> float32 scaled to 0..1 and normalised per channel (the student's statistics)."""
        x = frames_uint8.to(torch.float32) / 255.0
        return (x - torch.tensor(self.image_mean, dtype=torch.float32)) / torch.tensor(self.image_std,
                                                                                      dtype=torch.float32)

    def preprocess(self, videos, fps: float | None = None, return_tensors=None, **kwargs) -> BatchFeature:
        single = isinstance(videos, str) or (not isinstance(videos, (list, tuple))
                                             and torch.as_tensor(videos).dim() == 4)
        videos = [videos] if single else list(videos)
        frames, times = zip(*(self.frames(v, fps) for v in videos))
        pixels = torch.stack([self.normalise(f).permute(0, 3, 1, 2) for f in frames])  # (B, T, 3, S, S)
        return BatchFeature({"pixel_values_videos": pixels, "video_times": [list(t) for t in times]})


class LiteFrameProcessor(ProcessorMixin):
    """`processor(text=..., videos=...)`: text from `apply_chat_template` (each video item becomes `<video>`),
    one video per `<video>` -> input_ids, attention_mask, pixel_values_videos for `model.generate`."""

    def __init__(self, video_processor=None, tokenizer=None, chat_template=None, video_token: str = "<|video_pad|>",
                 tokens_per_group: int = 1, separators: str = "frame", **kwargs):
        self.video_token, self.tokens_per_group, self.separators = video_token, int(tokens_per_group), separators
        super().__init__(video_processor, tokenizer, chat_template=chat_template)

    def check_argument_for_proper_class(self, argument_name, argument):
        # transformers finds the expected classes in mappings that exist only where torchvision and PIL are
        # installed; the processor needs neither, so it names its own
        proper = {"video_processor": LiteFrameVideoProcessor, "tokenizer": PreTrainedTokenizerBase}[argument_name]
        if not isinstance(argument, proper):
            raise TypeError(f"{argument_name}: expected a {proper.__name__}, got a {type(argument).__name__}")
        return proper

    def __call__(self, text=None, videos=None, images=None, audio=None, fps: float | None = None, return_tensors="pt",
                 **kwargs) -> BatchFeature:
        texts = [text] if isinstance(text, str) else list(text)
        if videos is None:
            video_list = []
        elif isinstance(videos, (list, tuple)):
            video_list = list(videos)
        else:
            video_list = [videos]
        if sum(t.count(VIDEO_MARKER) for t in texts) != len(video_list):
            raise ValueError(f"the text holds {sum(t.count(VIDEO_MARKER) for t in texts)} {VIDEO_MARKER} markers "
                             f"for {len(video_list)} videos: put a {{'type': 'video'}} item in the message")
        data = {}
        if video_list:
            processed = self.video_processor(video_list, fps=fps)
            layout = {"video_token": self.video_token, "tokens_per_group": self.tokens_per_group,
                      "visual_groups": self.video_processor.visual_groups, "separators": self.separators}
            times = iter(processed["video_times"])
            expanded = []
            for t in texts:
                pieces = t.split(VIDEO_MARKER)
                out = pieces[0]
                for piece in pieces[1:]:
                    out += video_block(layout, next(times)) + piece
                expanded.append(out)
            texts = expanded
            data["pixel_values_videos"] = processed["pixel_values_videos"]
        self.tokenizer.padding_side = "left"  # generation continues every row from its last token
        tokens = self.tokenizer(texts, add_special_tokens=False, padding=len(texts) > 1, return_tensors=return_tensors)
        return BatchFeature({**tokens, **data}, tensor_type=return_tensors)
