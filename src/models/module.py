"""The Lightning system that trains and evaluates every variant (AE, VAE, RAE, RVAE)."""

from contextlib import nullcontext

import torch
from lightning.pytorch import LightningModule
from torchmetrics import MeanMetric

from src.errors import ConfigError
from src.models.components.autoencoder import AutoEncoder
from src.models.components.backbone import BlockType
from src.models.components.loss import autoencoder_loss
from src.models.metrics import AnomalyMetrics


def check_model_settings(
    n_layers: int,
    hidden_dim: int,
    latent_dim: int,
    block: str,
    beta: float,
    lr: float,
    weight_decay: float,
    input_dim: int | None = None,
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
    ]
    if input_dim is not None:  # a code larger than the input cannot compress it
        allowed = f"at most the input size of the data ({input_dim})"
        rules.append((latent_dim <= input_dim, "model.latent_dim", latent_dim, allowed))
    bad = [
        f"{name}={value!r} is invalid: it must be {allowed}." for ok, name, value, allowed in rules if not ok
    ]
    if bad:
        raise ConfigError(" ".join(bad))


class AnomalyAutoEncoder(LightningModule):
    """Trains an ``AutoEncoder`` on normal data and scores held-out data by reconstruction error.

    Logs ``train/epoch_loss`` (the epoch's mean training loss) and ``val/auroc`` every epoch, and
    ``test/auroc`` and ``test/auprc`` on test; the per-step values (``train/loss``, ``train/g_norm``) and
    the divergence check are ``src.runtime.callbacks.training_monitor.TrainingMonitor``'s.

    Args:
        input_dim: flattened input size; comes from the data, not from the model config.
        n_layers: hidden units per side; each holds one ``Linear(hidden_dim, hidden_dim)``.
        hidden_dim: width of every hidden unit.
        latent_dim: size of the code ``z``.
        residual: identity skips around every hidden unit (RAE, RVAE).
        variational: Gaussian latent with KL regulariser (VAE, RVAE).
        block: ``preact`` (He et al. 2016b "(b) proposed") or ``original`` ("(a) original").
        beta: weight of the KL term; ignored for deterministic models.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        compile: compile the network's training forward with ``torch.compile`` at the first training
            batch (``nn.Module.compile``, so checkpoints keep their keys). A smaller batch (an epoch's
            last) runs on the graphs already compiled, or eagerly, rather than compiling another.
    """

    def __init__(
        self,
        input_dim: int,
        n_layers: int = 4,
        hidden_dim: int = 256,
        latent_dim: int = 16,
        residual: bool = False,
        variational: bool = False,
        block: BlockType = "preact",
        beta: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_model_settings(n_layers, hidden_dim, latent_dim, block, beta, lr, weight_decay, input_dim)
        # Kept in checkpoints, not sent to loggers: ``src.train`` logs the whole config as ``model.*`` keys.
        self.save_hyperparameters(logger=False)
        self.net = AutoEncoder(input_dim, latent_dim, hidden_dim, n_layers, residual, variational, block)
        # one sample: the model summary then gives each layer's in/out sizes and FLOPs per scored sample
        self.example_input_array = torch.zeros(1, input_dim)
        if compile:
            # A fresh compile cache: multirun jobs share a process, and earlier jobs' graphs would fill it.
            torch.compiler.reset()
            self.net.compile()
        self.compiled_batch_size = 0
        # In the checkpoint, so that a run resumed mid-epoch reports the whole epoch's mean loss. A NaN loss
        # is the TrainingMonitor's to stop; "ignore" rather than "disable", which drops the weights.
        self.train_loss = MeanMetric(nan_strategy="ignore", sync_on_compute=False)
        self.train_loss.persistent(True)
        self.val_metrics = AnomalyMetrics()
        self.test_metrics = AnomalyMetrics()
        self.step_losses: dict[str, torch.Tensor] = {}  # this step's loss terms, for the TrainingMonitor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score per sample, shape ``(B,)``; higher = more anomalous."""
        return self.net.score(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, _ = batch
        with self.compile_stance(len(x)):
            out = self.net(x)
        losses = autoencoder_loss(x, out.x_hat, out.mu, out.logvar, beta=self.hparams.beta)
        self.step_losses = {f"train/{k}": v.detach() for k, v in losses.items()}
        # the mean over the ranks (a no-op on one device): every rank then holds the same sums, so the one
        # checkpoint rank 0 writes resumes each of them exactly
        self.train_loss.update(self.trainer.strategy.reduce(losses["loss"].detach()), weight=len(x))
        return losses["loss"]

    def compile_stance(self, batch_size: int):
        """Compile for the largest batch so far; run a smaller one (an epoch's last) on the graphs
        already compiled, or eagerly: compiling a second graph costs seconds, for one batch an epoch."""
        if not self.hparams.compile:
            return nullcontext()
        if batch_size < self.compiled_batch_size:
            return torch.compiler.set_stance("eager_on_recompile")
        self.compiled_batch_size = batch_size
        return nullcontext()

    def on_train_epoch_start(self) -> None:
        # Not at the epoch's end: a run resumed mid-epoch skips this hook and goes on from the
        # checkpoint's partial mean; and a run resumed after its last epoch still has that epoch's.
        self.train_loss.reset()

    def on_train_epoch_end(self) -> None:
        # the same on every rank already; ``sync_dist`` only keeps Lightning from advising it under DDP
        self.log("train/epoch_loss", self.train_loss.compute(), sync_dist=True)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.val_metrics.update(self.net.score(x), y)

    def on_validation_epoch_end(self) -> None:
        self.log_epoch_metrics("val", self.val_metrics)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.test_metrics.update(self.net.score(x), y)

    def on_test_epoch_end(self) -> None:
        self.log_epoch_metrics("test", self.test_metrics)

    def log_epoch_metrics(self, stage: str, metrics: AnomalyMetrics) -> None:
        # Computed once over the whole epoch (see ``src.models.metrics``); under DDP every rank holds the
        # same gathered values, and ``sync_dist`` only keeps Lightning from warning that they are not synced.
        values = metrics.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val", sync_dist=True)
        metrics.reset()

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly scores and labels of a batch, as ``test_step`` scores them."""
        x, y = batch
        return self.net.score(x), y

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Fused Adam: one kernel for all parameters instead of several per tensor (faster per step on CPU
        # for these small MLPs; see docs/performance.md), the same update up to float rounding. Not under
        # mixed precision, where Lightning refuses to clip the gradients of an optimizer that unscales them.
        fused = self.device.type in ("cpu", "cuda") and "mixed" not in str(self.trainer.precision)
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused
        )
