"""Losses and anomaly scores, per sample so that one function serves both training and scoring."""

import torch


def reconstruction_error(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Squared error summed over features: ``||x - x_hat||^2`` per sample, shape ``(B,)``; in float32
    even when ``x_hat`` comes out of bf16/fp16 autocast."""
    return (x_hat.float() - x.float()).pow(2).sum(dim=1)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, I))`` per sample, closed form (Kingma & Welling 2014, App. B).
    Summed in float32 even under bf16/fp16 autocast."""
    mu, logvar = mu.float(), logvar.float()
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def autoencoder_loss(
    x: torch.Tensor,
    x_hat: torch.Tensor,
    mu: torch.Tensor | None = None,
    logvar: torch.Tensor | None = None,
    *,
    beta: float,
) -> dict[str, torch.Tensor]:
    """Batch-mean loss terms: ``recon`` plus, when a Gaussian latent is given, ``beta * kl``."""
    recon = reconstruction_error(x_hat, x).mean()
    if mu is None:
        return {"loss": recon, "recon": recon}
    kl = gaussian_kl(mu, logvar).mean()
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl}
