"""The torch model behind all four variants: AE, VAE, RAE and RVAE differ only in two flags."""

from typing import Literal, NamedTuple

import torch
from torch import nn

from src.models.components.backbone import BlockType, ResidualMLP
from src.models.components.loss import reconstruction_error

OutputType = Literal["sigmoid", "linear"]


class AEOutput(NamedTuple):
    x_hat: torch.Tensor  # (B, D), in (0, 1) with a sigmoid output
    mu: torch.Tensor | None = None  # (B, Z); None for deterministic models
    logvar: torch.Tensor | None = None  # (B, Z)


class AutoEncoder(nn.Module):
    """Symmetric encoder/decoder on the residual MLP backbone. No defaults: the settings' defaults live
    in ``AnomalyAutoEncoder`` alone.

    ``residual`` toggles the identity skips (AE vs RAE); ``variational`` adds a Gaussian latent head
    with the reparameterization trick (AE vs VAE). ``output`` is the decoder's last step: ``sigmoid``
    for pixel intensities in [0, 1], ``linear`` for standardised features, which are unbounded.
    """

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        hidden_dim: int,
        n_layers: int,
        residual: bool,
        variational: bool,
        block: BlockType,
        output: OutputType,
    ) -> None:
        super().__init__()
        self.variational = variational
        self.sigmoid_output = output == "sigmoid"
        enc_out = 2 * latent_dim if variational else latent_dim
        self.encoder = ResidualMLP(input_dim, enc_out, hidden_dim, n_layers, residual, block)
        self.decoder = ResidualMLP(latent_dim, input_dim, hidden_dim, n_layers, residual, block)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return ``(mu, logvar)``; ``logvar`` is None for a deterministic model."""
        h = self.encoder(x)
        if not self.variational:
            return h, None
        mu, logvar = h.chunk(2, dim=1)  # (B, Z), (B, Z)
        return mu, logvar

    @staticmethod
    def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """``z = mu + sigma * eps`` with ``eps ~ N(0, I)`` (Kingma & Welling 2014, Sec. 2.4)."""
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        return torch.sigmoid(out) if self.sigmoid_output else out

    def forward(self, x: torch.Tensor) -> AEOutput:
        mu, logvar = self.encode(x)
        if not self.variational:
            return AEOutput(self.decode(mu))
        z = self.reparameterize(mu, logvar)
        return AEOutput(self.decode(z), mu, logvar)

    @torch.no_grad()
    def pathway(self, x: torch.Tensor) -> list[torch.Tensor]:
        """RaPP's projection pathway of ``x``: ``x`` itself, the encoder's hidden activations (see
        ``ResidualMLP.forward_with_hidden``) and the code (``mu`` for a VAE)."""
        out, hidden = self.encoder.forward_with_hidden(x)
        code = out.chunk(2, dim=1)[0] if self.variational else out
        return [x, *hidden, code]

    @torch.no_grad()
    def pathway_differences(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``h_i(x) - h_i(x_hat)`` at every layer ``i`` of the pathway, ``x_hat`` decoded from the code
        (the mean for a VAE); the first is ``x - x_hat``, whose squared norm is ``score``."""
        here = self.pathway(x)
        there = self.pathway(self.decode(here[-1]))
        return [a - b for a, b in zip(here, there, strict=True)]

    @torch.no_grad()
    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score per sample, higher = more anomalous: the reconstruction error of the
        reconstruction decoded from the latent mean (no sampling, so scores are deterministic)."""
        mu, _ = self.encode(x)
        return reconstruction_error(self.decode(mu), x)  # (B,)
