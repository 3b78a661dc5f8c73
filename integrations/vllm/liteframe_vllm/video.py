"""Videos reach the model as it trained on them. vLLM decodes a video URL with a loader chosen by the folder's
`video_processor_type` (`LiteFrameVideoProcessor`): this module registers one that takes the trained frames,
`num_frames` sampled uniformly (the middle frame of each of `num_frames` equal segments, the rule of
`liteframe_jax.pytorch.hf_processor.uniform_indices`), where vLLM's own loader takes `np.linspace` over the video.
It decodes with vLLM's codecs (OpenCV by default), as transformers' processor does where PyAV is not installed.

The number of frames comes from the folder: a config hook sets `--media-io-kwargs '{"video": {"num_frames": N}}'`
to the folder's `num_frames` unless the command line sets it (the loader's default would be 32).
"""

from __future__ import annotations

from typing import Any

from liteframe_jax.pytorch.hf_processor import uniform_indices

LOADER = "liteframe"
VIDEO_PROCESSOR = "LiteFrameVideoProcessor"


def register() -> None:
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP, VerifyAndUpdateConfig
    from vllm.multimodal.video import VIDEO_LOADER_REGISTRY, VideoBackend

    from liteframe_vllm import ARCHITECTURE

    if LOADER not in VIDEO_LOADER_REGISTRY.name2class:
        class TrainedFramesBackend(VideoBackend):
            """vLLM's loader (codecs, metadata) with the trained sampling rule."""

            _sampling_suffix = "_liteframe"

            @classmethod
            def compute_frames_index_to_sample(cls, source, target, **kwargs) -> list[int]:
                if target.num_frames <= 0:  # the whole video: the processor samples it
                    return list(range(source.total_frames_num))
                return uniform_indices(source.total_frames_num, target.num_frames)

        VIDEO_LOADER_REGISTRY.register(LOADER, video_processor=VIDEO_PROCESSOR)(TrainedFramesBackend)

    class FolderFrames(VerifyAndUpdateConfig):
        @staticmethod
        def verify_and_update_model_config(model_config) -> None:
            if model_config.multimodal_config is None:
                return
            video = model_config.multimodal_config.media_io_kwargs.setdefault("video", {})
            video.setdefault("num_frames", folder_num_frames(model_config.model, model_config.revision))

    MODELS_CONFIG_MAP.setdefault(ARCHITECTURE, FolderFrames)


def folder_num_frames(model: str, revision: str | None) -> int:
    """`num_frames` of the folder's video_preprocessor_config.json."""
    from vllm.transformers_utils.repo_utils import get_hf_file_to_dict

    config: dict[str, Any] | None = get_hf_file_to_dict("video_preprocessor_config.json", model, revision=revision)
    if not config or "num_frames" not in config:
        raise ValueError(f"{model!r}: no video_preprocessor_config.json with num_frames (an exported hf/ folder "
                         "was expected)")
    return int(config["num_frames"])
