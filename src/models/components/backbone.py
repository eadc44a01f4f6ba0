"""Residual MLP backbone shared by the encoder and decoder of every variant.

Each hidden unit holds exactly one ``Linear(width, width)``, so ``n_layers`` counts the hidden Linear
layers of one side (encoder or decoder); with the input and output projections a side has
``n_layers + 2`` Linear layers. The two unit types follow He et al., "Identity Mappings in Deep
Residual Networks" (ECCV 2016), Fig. 4: (a) original and (b) proposed (full pre-activation).
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

BlockType = Literal["preact", "original"]


class PreActBlock(nn.Module):
    """(b) proposed: ``x + W(relu(bn(x)))``; without the skip, ``W(relu(bn(x)))``."""

    def __init__(self, width: int, residual: bool) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(width)
        self.fc = nn.Linear(width, width)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(F.relu(self.norm(x)))  # (B, W)
        return x + h if self.residual else h


class OriginalBlock(nn.Module):
    """(a) original: ``relu(x + bn(W x))``; without the skip, ``relu(bn(W x))``."""

    def __init__(self, width: int, residual: bool) -> None:
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.norm = nn.BatchNorm1d(width)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.fc(x))  # (B, W)
        return F.relu(x + h if self.residual else h)


BLOCKS = {"preact": PreActBlock, "original": OriginalBlock}


class ResidualMLP(nn.Module):
    """Input projection, ``n_layers`` hidden units of one block type, output projection.

    A pre-activation stack ends with ``BatchNorm -> ReLU`` before the output projection (as in He et
    al.'s pre-activation ResNet); an original stack starts with it after the input projection. Both
    layouts therefore hold the same parameters, and with ``n_layers=0`` the network is a one-hidden-layer
    MLP. ``residual`` only changes ``forward``: plain and residual stacks have identical parameters.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        width: int,
        n_layers: int,
        residual: bool,
        block: BlockType,
    ) -> None:
        super().__init__()
        unit = BLOCKS[block]  # the settings are checked by ``src.models.settings.check_model_settings``
        self.preact = block == "preact"
        self.proj_in = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList([unit(width, residual) for _ in range(n_layers)])
        self.norm = nn.BatchNorm1d(width)
        self.proj_out = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_hidden(x)[0]  # (B, out_dim)

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The output and the hidden activations: what the input projection hands the first unit, then
        each unit's output, each ``(B, W)`` (RaPP's projection pathway, ``src.models.rapp``)."""
        x = self.proj_in(x)  # (B, W)
        if not self.preact:
            x = F.relu(self.norm(x))
        hidden = [x]
        for blk in self.blocks:
            x = blk(x)
            hidden.append(x)
        if self.preact:
            x = F.relu(self.norm(x))
        return self.proj_out(x), hidden  # (B, out_dim)
