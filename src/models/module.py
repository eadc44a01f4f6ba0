"""The Lightning system that trains and evaluates every variant (AE, VAE, RAE, RVAE)."""

import math

import torch
from lightning.pytorch import LightningModule

from src.metrics import AnomalyMetrics
from src.models.components.autoencoder import AutoEncoder
from src.models.components.backbone import BlockType
from src.models.components.loss import autoencoder_loss


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or gradient norm; the weights were not updated with it."""

    def __init__(self, step: int, reason: str, last_finite_g_norm: float | None) -> None:
        self.step, self.reason, self.last_finite_g_norm = step, reason, last_finite_g_norm
        super().__init__(
            f"Training diverged at step {step}: {reason} (last finite train/g_norm: {last_finite_g_norm}). "
            "The run stopped before applying it; the best and last checkpoints hold the weights from "
            "before. Try gradient clipping (trainer.gradient_clip_val), a lower model.lr, or fewer layers."
        )


def check_model_settings(
    input_dim: int | None,
    n_layers: int,
    hidden_dim: int,
    latent_dim: int,
    block: str,
    beta: float,
    lr: float,
    weight_decay: float,
) -> None:
    """Raise ``ValueError`` naming each out-of-range model setting, its value and what is allowed."""
    rules = [
        (n_layers >= 0, "model.n_layers", n_layers, "an integer >= 0 (0 = projections only)"),
        (hidden_dim >= 1, "model.hidden_dim", hidden_dim, "an integer >= 1"),
        (latent_dim >= 1, "model.latent_dim", latent_dim, "an integer >= 1"),
        (block in ("preact", "original"), "model.block", block, "'preact' or 'original'"),
        (beta >= 0, "model.beta", beta, "a number >= 0"),
        (lr > 0, "model.lr", lr, "a number > 0"),
        (weight_decay >= 0, "model.weight_decay", weight_decay, "a number >= 0"),
    ]
    if input_dim is not None:
        rules.append(
            (
                latent_dim <= input_dim,
                "model.latent_dim",
                latent_dim,
                f"at most the input size of the data ({input_dim}); a code larger than the input "
                "cannot compress it",
            )  # fmt: skip
        )
    bad = [
        f"{name}={value!r} is invalid: it must be {allowed}." for ok, name, value, allowed in rules if not ok
    ]
    if bad:
        raise ValueError(" ".join(bad))


def _params_with_grad(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    # The optimizer's flat lists, not ``self.parameters()``: that walks every submodule, twice a step.
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


class AnomalyAutoEncoder(LightningModule):
    """Trains an ``AutoEncoder`` on normal data and scores held-out data by reconstruction error.

    Logs ``train/loss`` (and ``train/recon``, ``train/kl`` for variational models) and ``train/g_norm``
    every step, ``train/epoch_loss`` (the epoch's mean training loss) and ``val/auroc`` every epoch,
    and ``test/auroc`` and ``test/auprc`` on test.

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
        compile: compile the network's training forward with ``torch.compile`` (``nn.Module.compile``,
            so checkpoints keep their keys and load either way); evaluation scores run eagerly.
    """

    def __init__(
        self,
        input_dim: int,
        n_layers: int = 4,
        hidden_dim: int = 256,
        latent_dim: int = 16,
        residual: bool = True,
        variational: bool = False,
        block: BlockType = "preact",
        beta: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_model_settings(input_dim, n_layers, hidden_dim, latent_dim, block, beta, lr, weight_decay)
        self.save_hyperparameters()
        self.net = AutoEncoder(input_dim, latent_dim, hidden_dim, n_layers, residual, variational, block)
        if compile:
            # A fresh compile cache: multirun jobs share a process, and the graphs of earlier jobs' models
            # would otherwise fill it until dynamo recompiles every step or gives up.
            torch.compiler.reset()
            self.net.compile()  # lazily, at the first training batch
        # sum of this epoch's training loss over its samples, accumulated on-device without host syncs
        self.register_buffer("epoch_loss_sum", torch.zeros(()), persistent=False)
        self.epoch_loss_n = 0
        # running max of train/g_norm; a buffer so it follows the device, never syncs to the host
        # and survives a resume
        self.register_buffer("g_norm_max", torch.zeros(()))
        self.last_finite_g_norm: float | None = None
        self.g_norm: torch.Tensor | None = None  # this step's norm, reused by the clipping
        self.val_metrics = AnomalyMetrics()
        self.test_metrics = AnomalyMetrics()

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets ``_current_fx_name`` (and similar) on the module around every hook it calls, some
        # 40 times a step, and ``nn.Module.__setattr__`` checks each value against parameters, buffers and
        # submodules: 0.1-0.2 ms a step on CPU. An attribute already in ``__dict__`` is none of those, so a
        # new value that is not a tensor or module can be set directly.
        if name in self.__dict__ and not isinstance(value, torch.Tensor | torch.nn.Module):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score per sample, shape ``(B,)``; higher = more anomalous."""
        return self.net.score(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, _ = batch
        out = self.net(x)
        losses = autoencoder_loss(x, out.x_hat, out.mu, out.logvar, self.hparams.beta)
        self.step_losses = {k: v.detach() for k, v in losses.items()}  # checked and logged with g_norm
        loss = losses["loss"]
        self.epoch_loss_sum.add_(loss.detach(), alpha=len(x))
        self.epoch_loss_n += len(x)
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/epoch_loss", self.epoch_loss_sum / self.epoch_loss_n, sync_dist=True)
        self.log("train/g_norm_max", self.g_norm_max)
        self.epoch_loss_sum.zero_()
        self.epoch_loss_n = 0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called before Lightning clips, so this is the raw norm that clipping then bounds.
        g_norm = torch.nn.utils.get_total_norm([p.grad for p in _params_with_grad(optimizer)])
        values = self.step_losses | {"g_norm": g_norm}
        # one device-to-host copy a step serves both the divergence check and the loggers
        values = dict(zip(values, torch.stack(list(values.values())).tolist(), strict=True))
        self._log_step(values)  # before the check: a diverged value is logged too
        for key in ("loss", "g_norm"):  # stop before a non-finite update reaches the weights
            if not math.isfinite(values[key]):
                raise DivergedError(
                    self.global_step, f"train/{key} is {values[key]}", self.last_finite_g_norm
                )
        self.last_finite_g_norm = values["g_norm"]
        self.g_norm = g_norm.detach()
        torch.maximum(self.g_norm_max, self.g_norm, out=self.g_norm_max)

    def _log_step(self, values: dict[str, float]) -> None:
        """Write this step's ``train/*`` values straight to the trainer's loggers.

        Lightning's ``self.log`` costs about a millisecond per key per step on CPU (each call moves its
        result object to the value's device through ``apply_to_collection``): a quarter of a small model's
        step. Per-step values need none of its epoch reduction, so they go to the loggers directly, at the
        step and cadence (``trainer.log_every_n_steps``) and with the ``epoch`` column ``self.log`` would
        give them. They reach disk at each logger's own pace (``CSVLogger`` every
        ``flush_logs_every_n_steps``, W&B and TensorBoard in the background) and when the run ends or
        fails, rather than with a file write every step as ``self.log`` does. They are not in
        ``trainer.callback_metrics``.
        """
        trainer = self.trainer
        if not trainer.loggers or not trainer.log_every_n_steps:
            return
        if (self.global_step + 1) % trainer.log_every_n_steps and not trainer.should_stop:
            return
        metrics = {f"train/{k}": v for k, v in values.items()}
        metrics["epoch"] = self.current_epoch
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Lightning's ``gradient_clip_val`` by norm, reusing the norm computed for ``train/g_norm``
        instead of computing it a second time."""
        if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
            torch.nn.utils.clip_grads_with_norm_(_params_with_grad(optimizer), gradient_clip_val, self.g_norm)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _shared_eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], metrics) -> None:
        x, y = batch
        metrics.update(self.net.score(x), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._shared_eval_step(batch, self.val_metrics)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._shared_eval_step(batch, self.test_metrics)

    def _log_metrics(self, stage: str, metrics: AnomalyMetrics) -> None:
        # Computed once over the whole epoch, never per batch (see ``src.metrics``).
        values = metrics.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val")
        metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Fused Adam: one kernel for all parameters instead of ~7 per tensor; 10-20% faster per step on
        # CPU for these small MLPs, same update up to float rounding. Lightning has moved the model already.
        fused = self.device.type in ("cpu", "cuda")
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused
        )
