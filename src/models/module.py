"""The Lightning system that trains and evaluates every variant (AE, VAE, RAE, RVAE)."""

from contextlib import nullcontext

import torch
from lightning.pytorch import Callback, LightningModule

from src.metrics import AnomalyMetrics
from src.models.components.autoencoder import AutoEncoder
from src.models.components.backbone import BlockType
from src.models.components.loss import autoencoder_loss
from src.models.step_values import StepValues


def check_model_settings(
    input_dim: int | None,
    n_layers: int,
    hidden_dim: int,
    latent_dim: int,
    block: str,
    beta: float,
    lr: float,
    weight_decay: float,
    host_sync_every: int = 1,
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
        (host_sync_every >= 1, "model.host_sync_every", host_sync_every, "an integer >= 1 (1 = every step)"),
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


class _ReadBackOnException(Callback):
    """Hands a failing or interrupted run's pending step values to the loggers before Lightning
    finalizes them (a ``LightningModule`` has no ``on_exception`` hook of its own)."""

    def on_exception(self, trainer, pl_module: "AnomalyAutoEncoder", exception: BaseException) -> None:
        pl_module.read_back_steps(check=False)


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
            so checkpoints keep their keys and load either way) at the first training batch. A
            smaller batch (an epoch's last) runs eagerly rather than compiling a second graph
            (``torch.compiler.set_stance("eager_on_recompile")``). Evaluation scores run eagerly.
        host_sync_every: read the per-step values back from the device every this many steps (and at
            every validation, epoch end, checkpoint and the end of training), in one copy. Between two
            reads nothing waits on the device, so a GPU's queue never drains. The loggers receive the
            values at each read, and the divergence check runs over them then; meanwhile a non-finite
            step makes fused Adam skip its update, and every later one, on the device. 1 = every step.
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
        host_sync_every: int = 50,
    ) -> None:
        super().__init__()
        check_model_settings(
            input_dim, n_layers, hidden_dim, latent_dim, block, beta, lr, weight_decay, host_sync_every
        )
        # Kept in checkpoints, not sent to loggers: ``src.train`` logs the whole config as flat ``model.*``
        # keys, and both would put every model setting in W&B twice (``n_layers`` and ``model.n_layers``).
        self.save_hyperparameters(logger=False)
        self.net = AutoEncoder(input_dim, latent_dim, hidden_dim, n_layers, residual, variational, block)
        # one sample: the model summary then gives each layer's in/out sizes and FLOPs per scored sample
        self.example_input_array = torch.zeros(1, input_dim)
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
        self.g_norm: torch.Tensor | None = None  # this step's norm, reused by the clipping
        # 1.0 from the first non-finite step on: fused Adam then skips its update on the device
        self.register_buffer("found_inf", torch.zeros(()), persistent=False)
        self.step_values = StepValues()  # this run's per-step values not yet read back to the host
        self.compiled_batch_size = 0  # see ``_compile_stance``
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
        with self._compile_stance(len(x)):
            out = self.net(x)
        losses = autoencoder_loss(x, out.x_hat, out.mu, out.logvar, self.hparams.beta)
        self.step_losses = {f"train/{k}": v.detach() for k, v in losses.items()}  # kept with g_norm
        loss = losses["loss"]
        self.epoch_loss_sum.add_(loss.detach(), alpha=len(x))
        self.epoch_loss_n += len(x)
        return loss

    def _compile_stance(self, batch_size: int):
        """Compile for the largest batch so far; run a smaller one (an epoch's last) on the graphs
        already compiled, or eagerly where none fits. Compiling a second graph for it cost 7.5 s more per
        run on CPU (digits, ``n_layers=2``), for one batch an epoch."""
        if not self.hparams.compile:
            return nullcontext()
        if batch_size < self.compiled_batch_size:
            return torch.compiler.set_stance("eager_on_recompile")  # cached graphs only, else eager
        self.compiled_batch_size = batch_size
        return nullcontext()

    def on_train_epoch_start(self) -> None:
        # Not at the epoch's end: a run resumed mid-epoch skips this hook and goes on summing from the
        # checkpoint's partial sum (``on_load_checkpoint``), so its epoch mean is the whole epoch's.
        self.epoch_loss_sum.zero_()
        self.epoch_loss_n = 0

    def on_train_epoch_end(self) -> None:
        self.read_back_steps()
        self.log("train/epoch_loss", self.epoch_loss_sum / self.epoch_loss_n, sync_dist=True)
        self.log("train/g_norm_max", self.g_norm_max, sync_dist=True)  # equal on all ranks (averaged grads)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Called before Lightning clips, so this is the raw norm that clipping then bounds.
        g_norm = torch.nn.utils.get_total_norm([p.grad for p in _params_with_grad(optimizer)])
        self.g_norm = g_norm.detach()
        values = self.step_losses | {"train/g_norm": self.g_norm}
        self.step_values.add(self.global_step, self.current_epoch, self._log_due(), values)
        if self.hparams.host_sync_every > 1 and getattr(optimizer, "_step_supports_amp_scaling", False):
            # The optimizer (fused Adam) skips its update on the device while ``found_inf`` is 1, the
            # mechanism GradScaler uses: no non-finite update reaches the weights before the host reads
            # this step back, and none after it, so the run stops with the weights from before it.
            finite = torch.isfinite(self.step_losses["train/loss"]).logical_and_(torch.isfinite(g_norm))
            self.found_inf.masked_fill_(finite.logical_not_(), 1.0)
            optimizer.found_inf = self.found_inf
            if len(self.step_values) < self.hparams.host_sync_every:
                return
        self.read_back_steps()  # other optimizers: every step, before the update

    def _log_due(self) -> bool:
        """Whether this step's values go to the loggers: at ``trainer.log_every_n_steps``, with the same
        step convention as ``self.log``, and on the last step of a stopping run."""
        trainer = self.trainer
        if not trainer.loggers or not trainer.log_every_n_steps:
            return False
        return not (self.global_step + 1) % trainer.log_every_n_steps or trainer.should_stop

    def read_back_steps(self, check: bool = True) -> None:
        """Read the pending steps' values back to the host in one copy and hand the due ones to the loggers;
        if ``check``, raise ``DivergedError`` at the first non-finite loss or norm (``StepValues``)."""
        try:
            self.step_values.read_back(self.trainer.loggers, check)
        finally:
            self.g_norm_max.clamp_(min=self.step_values.g_norm_max)  # a host number: no device-to-host copy

    def on_train_start(self) -> None:
        self.step_values.clear()
        self.found_inf.zero_()

    def on_validation_epoch_start(self) -> None:
        self.read_back_steps()  # so the loggers get the steps before the validation's values

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self.read_back_steps()  # no checkpoint is saved past a non-finite step
        # The loggers write out what they hold, so the history on disk reaches the checkpoint's step even
        # if the process is then killed: a resume logs from there on, it cannot log the steps before.
        for logger in self.trainer.loggers:
            logger.save()
        checkpoint["epoch_loss"] = {"sum": self.epoch_loss_sum.detach().cpu(), "n": self.epoch_loss_n}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "epoch_loss" in checkpoint:  # not in checkpoints saved before it was added
            self.epoch_loss_sum.copy_(checkpoint["epoch_loss"]["sum"])
            self.epoch_loss_n = checkpoint["epoch_loss"]["n"]

    def on_train_end(self) -> None:
        self.read_back_steps()

    def configure_callbacks(self) -> list[Callback]:
        # Lightning asks again at every ``test``/``validate`` after ``fit``; a second instance would
        # replace the first with an "override existing callbacks" notice in every run's output.
        if any(isinstance(c, _ReadBackOnException) for c in self.trainer.callbacks):
            return []
        return [_ReadBackOnException()]

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

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly scores and labels of a batch, as ``test_step`` scores them."""
        x, y = batch
        return self.net.score(x), y

    def _log_metrics(self, stage: str, metrics: AnomalyMetrics) -> None:
        # Computed once over the whole epoch, never per batch (see ``src.metrics``). Under DDP every rank
        # already holds the same values (the states are gathered); ``sync_dist`` averages those, which
        # changes nothing but keeps Lightning from warning, at every epoch, that they are not synced.
        values = metrics.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val", sync_dist=True)
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
