"""The model settings' names and allowed values, checked in one place: by ``AnomalyAutoEncoder`` when it
is built, and by ``src.runtime.config.check_config`` before any data is read."""

from typing import Literal, get_args

from src.errors import ConfigError
from src.models.components.autoencoder import OutputType

ScoreType = Literal["recon", "sap", "nap"]
SCORES = get_args(ScoreType)
OUTPUTS = get_args(OutputType)


def check_model_settings(
    n_layers: int,
    hidden_dim: int,
    latent_dim: int,
    block: str,
    beta: float,
    lr: float,
    weight_decay: float,
    score: str = "recon",
    input_dim: int | None = None,
    output: str | None = None,
) -> None:
    """Raise ``ConfigError`` naming each out-of-range model setting, its value and what is allowed."""
    rules = [
        (n_layers >= 0, "model.n_layers", n_layers, "an integer >= 0 (0 = projections only)"),
        (hidden_dim >= 1, "model.hidden_dim", hidden_dim, "an integer >= 1"),
        (latent_dim >= 1, "model.latent_dim", latent_dim, "an integer >= 1"),
        (block in ("preact", "original"), "model.block", block, "'preact' or 'original'"),
        (beta >= 0, "model.beta", beta, "a number >= 0"),
        (lr > 0, "model.lr", lr, "a number > 0"),
        (weight_decay >= 0, "model.weight_decay", weight_decay, "a number >= 0"),
        (score in SCORES, "model.score", score, "'recon', 'sap' or 'nap'"),
        (output in (None, *OUTPUTS), "model.output", output, "'sigmoid', 'linear' or null (the data's)"),
    ]
    if input_dim is not None:  # a code larger than the input cannot compress it
        allowed = f"at most the input size of the data ({input_dim})"
        rules.append((latent_dim <= input_dim, "model.latent_dim", latent_dim, allowed))
    bad = [
        f"{name}={value!r} is invalid: it must be {allowed}." for ok, name, value, allowed in rules if not ok
    ]
    if bad:
        raise ConfigError(" ".join(bad))
