"""The projector of an exported LiteFrame Video LLM in PyTorch: the student's tokens -> the LLM's width. Imports
torch only."""

from __future__ import annotations

import torch
from torch import nn

from liteframe_jax.pytorch.encoder import activation
from liteframe_jax.pytorch.weights import read_config, read_folder


class Projector(nn.Module):
    """LayerNorm (optional) -> Linear -> activation -> Linear ('mlp'), or one Linear ('linear')."""

    def __init__(self, config: dict):
        super().__init__()
        kind, d_in, d_out = config["kind"], config["in_features"], config["out_features"]
        hidden = config["hidden"] or d_out
        self.norm = nn.LayerNorm(d_in, eps=config["norm_eps"]) if config["norm"] else None
        self.fc1 = nn.Linear(d_in, hidden if kind == "mlp" else d_out)
        self.fc2 = nn.Linear(hidden, d_out) if kind == "mlp" else None
        self.act = activation(config["act"])

    @classmethod
    def from_pretrained(cls, folder: str) -> "Projector":
        model = cls(read_config(folder, "liteframe_projector"))
        model.load_state_dict(read_folder(folder))
        return model.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None:
            x = self.norm(x)
        x = self.fc1(x)
        return x if self.fc2 is None else self.fc2(self.act(x))
