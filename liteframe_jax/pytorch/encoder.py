"""The LiteFrame student in plain PyTorch: an exported `student/` folder (config.json + model.safetensors) in,
the same visual tokens as the JAX model out. Imports torch only, so a PyTorch stack can take it as it is.

    encoder = LiteFrameEncoder.from_pretrained("export/student")
    tokens = encoder.encode_video(frames_uint8)   # (T, S, S, 3) uint8, T a multiple of the clip's 8 frames

Frames (B, T, H, W, 3) normalised -> tubelet embedding (a Conv3d with kernel = stride = the tubelet) plus
spatial and temporal position tables -> stages of [spatial self-attention per frame, depth-wise temporal
convolution, MLP] blocks, each stage followed by a depth-wise strided Conv3d -> LayerNorm -> Linear, tokens
flattened in (t, h, w) order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from liteframe_jax.pytorch.weights import read_config, read_folder

MODEL_TYPE = "liteframe_student"

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; supported: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class SpatialAttention(nn.Module):
    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(width, width) for _ in range(4))
        self.num_heads = num_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, d = x.shape
        tokens = x.reshape(b * t, h * w, d)  # attention within each frame
        split = lambda y: y.reshape(b * t, h * w, self.num_heads, -1).transpose(1, 2)
        y = F.scaled_dot_product_attention(split(self.q(tokens)), split(self.k(tokens)), split(self.v(tokens)))
        return self.out(y.transpose(1, 2).reshape(b * t, h * w, d)).reshape(b, t, h, w, d)


class TemporalConv(nn.Module):
    """Depth-wise convolution over time at every spatial position, zero 'same' padding."""

    def __init__(self, width: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, h, w, d = x.shape
        y = self.conv(x.permute(0, 2, 3, 4, 1).reshape(b * h * w, d, t))
        return y.reshape(b, h, w, d, t).permute(0, 4, 1, 2, 3)


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.fc1, self.fc2, self.act = nn.Linear(width, hidden), nn.Linear(hidden, width), activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d, eps = cfg["width"], cfg["norm_eps"]
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.attn = SpatialAttention(d, cfg["num_heads"])
        self.norm_t = nn.LayerNorm(d, eps=eps)
        self.tconv = TemporalConv(d, cfg["temporal_kernel"])
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = Mlp(d, cfg["mlp_dim"], cfg["act"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.tconv(self.norm_t(x))
        return x + self.mlp(self.norm2(x))


class Stage(nn.Module):
    def __init__(self, cfg: dict, num_blocks: int, stride):
        super().__init__()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(num_blocks))
        stride = tuple(stride)
        d = cfg["width"]
        # non-overlapping (kernel == stride) depth-wise downsampling
        self.down = None if stride == (1, 1, 1) else nn.Conv3d(d, d, stride, stride=stride, groups=d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.down is not None:
            x = self.down(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        return x


class LiteFrameEncoder(nn.Module):
    """`forward(frames)`: (B, T, H, W, 3) normalised frames, T the clip's frames -> (B, T'*H'*W', out_dim)."""

    def __init__(self, config: dict):
        super().__init__()
        arch = config["architecture"]
        self.config = config
        self.num_frames, self.image_size = arch["num_frames"], arch["image_size"]
        pt, ph, pw = arch["patch_size"]
        if self.num_frames % pt or self.image_size % ph or self.image_size % pw:
            raise ValueError(f"input {self.num_frames}x{self.image_size}x{self.image_size} is not divisible by "
                             f"the tubelet {arch['patch_size']}")
        t, h, w = self.num_frames // pt, self.image_size // ph, self.image_size // pw
        d = arch["width"]
        self.patch_embed = nn.Conv3d(3, d, (pt, ph, pw), stride=(pt, ph, pw))
        self.grid = (h, w)
        table = tuple(arch.get("position_grid") or (0, 0))
        self.pos_spatial = nn.Parameter(torch.zeros(*(table if any(table) else self.grid), d))
        self.pos_temporal = nn.Parameter(torch.zeros(t, d))
        self.stages = nn.ModuleList(Stage(arch, n, stride) for n, stride in arch["stages"])
        self.final_norm = nn.LayerNorm(d, eps=arch["norm_eps"])
        self.head = nn.Linear(d, arch["out_dim"])
        self.register_buffer("pixel_mean", torch.tensor(config["pixel_mean"], dtype=torch.float32), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(config["pixel_std"], dtype=torch.float32), persistent=False)

    @classmethod
    def from_pretrained(cls, folder: str, *, dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None) -> "LiteFrameEncoder":
        """An exported `student/` folder; `dtype` defaults to the dtype it was written in."""
        config = read_config(folder, MODEL_TYPE)
        model = cls(config)
        tensors = read_folder(folder)
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        if missing or unexpected:
            raise ValueError(f"{folder!r}: the weights do not fit config.json (missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]})")
        dtype = dtype or next(iter(tensors.values())).dtype
        return model.to(device=device, dtype=dtype).eval()

    @property
    def tokens_per_clip(self) -> int:
        return math.prod(self.config["output_grid"])

    def normalise(self, frames_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3) -> the per-channel normalised floats the model takes, in its parameters' dtype."""
        x = frames_uint8.to(torch.float32) / 255.0
        x = (x - self.pixel_mean.to(x.device)) / self.pixel_std.to(x.device)
        return x.to(self.head.weight.dtype)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t, h, w, c = frames.shape
        if (t, h, w, c) != (self.num_frames, self.image_size, self.image_size, 3):
            raise ValueError(f"expected frames of shape (B, {self.num_frames}, {self.image_size}, {self.image_size}, "
                             f"3), got {tuple(frames.shape)}")
        x = self.patch_embed(frames.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        spatial = self.pos_spatial
        if tuple(spatial.shape[:2]) != self.grid:  # trained at another size: resampled as InternViT's table is
            spatial = nn.functional.interpolate(spatial.permute(2, 0, 1)[None].float(), size=self.grid,
                                                mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
            spatial = spatial.to(self.pos_spatial.dtype)
        x = x + (spatial[None] + self.pos_temporal[:, None, None])[None]
        for stage in self.stages:
            x = stage(x)
        b, t, h, w, d = x.shape
        return self.head(self.final_norm(x)).reshape(b, t * h * w, -1)

    @torch.no_grad()
    def encode_video(self, frames_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (T, S, S, 3) or (B, T, S, S, 3) frames, T a multiple of the clip length -> (B, clips * tokens per
        clip, out_dim): clip after clip, each clip's tokens in (t, h, w) order."""
        x = frames_uint8 if frames_uint8.dim() == 5 else frames_uint8[None]
        b, t = x.shape[:2]
        if t % self.num_frames:
            raise ValueError(f"{t} frames is not a multiple of the encoder's {self.num_frames}-frame clips")
        clips = self.normalise(x.to(self.head.weight.device)).reshape(b * (t // self.num_frames), self.num_frames,
                                                                      *x.shape[2:])
        return self(clips).reshape(b, -1, self.head.out_features)
