"""The Lightning system that trains and evaluates every variant (AE, VAE, RAE, RVAE)."""

from contextlib import nullcontext
from typing import Any, Literal, get_args

import torch
from lightning.pytorch import LightningModule
from torchmetrics import MeanMetric

from src.errors import ConfigError
from src.models import rapp
from src.models.components.autoencoder import AutoEncoder, OutputType
from src.models.components.backbone import BlockType
from src.models.components.loss import autoencoder_loss
from src.models.metrics import AnomalyMetrics

ScoreType = Literal["recon", "sap", "nap"]
SCORES = get_args(ScoreType)
OUTPUTS = get_args(OutputType)
# NAP's statistics come from at most this many training normals (a fixed subset, ``normal_dataloader``):
# enough for the SVD of a pathway of a few thousand dimensions, and seconds to fit at each validation.
NAP_FIT_SAMPLES = 4096


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


class AnomalyAutoEncoder(LightningModule):
    """Trains an ``AutoEncoder`` on normal data and scores held-out data by reconstruction error.

    Logs ``train/epoch_loss`` (the epoch's mean training loss) and ``val/auroc`` every epoch, and
    ``test/auroc`` and ``test/auprc`` on test, all of the score ``score`` chooses. The test also logs
    every score's (``test/auroc_recon``, ``_sap``, ``_nap``, and their ``auprc``) and each pathway layer's
    alone (``test/auroc_layer_<i>``: 0 the input space, last the code). The per-step values
    (``train/loss``, ``train/g_norm``) and the divergence check are
    ``src.runtime.callbacks.training_monitor.TrainingMonitor``'s.

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
        score: the anomaly score behind ``val/auroc``, the best checkpoint and ``test/auroc``:
            ``recon`` (the reconstruction error, the study's), or RaPP's ``sap`` or ``nap``
            (``src.models.rapp``). NAP's statistics are fitted on the training normals at each validation
            (with ``nap``) or at test, and saved in the checkpoints.
        output: the decoder's last step: ``sigmoid`` (reconstructions in (0, 1), for pixels) or
            ``linear`` (for raw features, which the model standardises with ``input_mean`` and
            ``input_scale``, the training normals' statistics); None: the data's choice, which
            ``src.train`` fills in (``sigmoid`` for a model built by hand).
        nap_input: whether the input space (``h_0 = x``) enters NAP, as RaPP defines it. Without it, NAP
            beats both RaPP's own and the reconstruction error on MNIST-5k (``docs/results/rapp.md``).
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
        score: ScoreType = "recon",
        output: OutputType | None = None,
        nap_input: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__()
        check_model_settings(
            n_layers, hidden_dim, latent_dim, block, beta, lr, weight_decay, score, input_dim, output
        )
        output = output or "sigmoid"
        # Kept in checkpoints, not sent to loggers: ``src.train`` logs the whole config as ``model.*`` keys.
        self.save_hyperparameters(logger=False)
        self.net = AutoEncoder(
            input_dim, latent_dim, hidden_dim, n_layers, residual, variational, block, output
        )
        # Raw features are standardised inside the model, so that a checkpoint or an export scores raw
        # data; set from the training normals at fit (``setup``). Pixels keep 0 and 1 and skip the step:
        # at batch 512 of 784 pixels it costs about 1 ms, up to a tenth of a small model's step on CPU.
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_scale", torch.ones(input_dim))
        self.standardizes = False
        self.inputs: dict | None = None  # what a sample is (``OneClassDataModule.input_description``)
        self.labelled = True  # False for data without labels: no AUROC to measure
        # one sample: the model summary then gives each layer's in/out sizes and FLOPs per scored sample
        # (not for NAP, whose score needs statistics fitted at the first validation, after the summary)
        self.example_input_array = torch.zeros(1, input_dim) if score != "nap" else None
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
        # every score and each pathway layer (input, input projection, n_layers units, code) alone
        layers = [f"layer_{i}" for i in range(n_layers + 3)]
        self.test_metrics = torch.nn.ModuleDict({k: AnomalyMetrics() for k in (*SCORES, *layers)})
        self.nap: rapp.NapStatistics | None = None
        self.nap_from = 0 if nap_input else 1  # the first pathway layer NAP reads
        self.step_losses: dict[str, torch.Tensor] = {}  # this step's loss terms, for the TrainingMonitor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Anomaly score per sample (``score``'s), shape ``(B,)``; higher = more anomalous."""
        if self.hparams.score == "recon":
            return self.net.score(self.standardize(x))
        if self.hparams.score == "nap" and self.nap is None:
            raise RuntimeError("NAP's statistics are not fitted yet: call fit_nap on the training normals.")
        return self.scores(x)[self.hparams.score]

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_scale if self.standardizes else x

    def scores(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every score per sample (``src.models.rapp.scores``)."""
        return rapp.scores(self.net, self.standardize(x), self.nap, nap_from=self.nap_from)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        self.labelled = getattr(datamodule, "labelled", True)
        if stage == "fit" and hasattr(datamodule, "input_description"):
            self.inputs = datamodule.input_description()
            if datamodule.feature_statistics is not None:
                mean, scale = datamodule.feature_statistics
                self.input_mean.copy_(mean)
                self.input_scale.copy_(scale)
                self.standardizes = True

    @torch.no_grad()
    def fit_nap(self, loader) -> None:
        """Fit NAP's statistics on ``loader``'s batches (training normals), in eval mode."""
        training = self.training
        self.eval()
        diffs = [
            self.net.pathway_differences(self.standardize(x.to(self.device)))[self.nap_from :]
            for x, _ in loader
        ]
        self.nap = rapp.fit_nap(torch.cat([torch.cat(d, dim=1) for d in diffs]))
        self.train(training)

    def fit_nap_on_training_normals(self) -> None:
        datamodule = self.trainer.datamodule
        if not hasattr(datamodule, "normal_dataloader"):
            raise RuntimeError(
                "NAP's statistics are fitted on the training normals, which come from the DataModule's "
                "normal_dataloader: pass datamodule=OneClassDataModule(...) to the Trainer's fit and test."
            )
        self.fit_nap(datamodule.normal_dataloader(NAP_FIT_SAMPLES))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = self.standardize(batch[0])
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

    def on_validation_epoch_start(self) -> None:
        if self.hparams.score == "nap":  # the checkpoint this validation picks carries these statistics
            self.fit_nap_on_training_normals()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        if self.labelled:
            self.val_metrics.update(self(x), y)

    def on_validation_epoch_end(self) -> None:
        if self.labelled:
            self.log_epoch_metrics("val", self.val_metrics)

    def on_test_epoch_start(self) -> None:
        # With ``nap`` the tested checkpoint brought the statistics it was validated with; otherwise
        # they are fitted now, on the tested weights.
        if self.hparams.score != "nap" or self.nap is None:
            self.fit_nap_on_training_normals()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        if not self.labelled:
            return
        for name, value in self.scores(x).items():
            self.test_metrics[name].update(value, y)

    def on_test_epoch_end(self) -> None:
        if not self.labelled:
            return
        results = {name: metric.compute() for name, metric in self.test_metrics.items()}
        values = {f"test/{k}": v for k, v in results[self.hparams.score].items()}
        values |= {f"test/auroc_{name}": result["auroc"] for name, result in results.items()}
        values |= {f"test/auprc_{name}": results[name]["auprc"] for name in SCORES}
        self.log_dict(values, sync_dist=True)  # see ``log_epoch_metrics``
        for metric in self.test_metrics.values():
            metric.reset()

    def log_epoch_metrics(self, stage: str, metrics: AnomalyMetrics) -> None:
        # Computed once over the whole epoch (see ``src.models.metrics``); under DDP every rank holds the
        # same gathered values, and ``sync_dist`` only keeps Lightning from warning that they are not synced.
        values = metrics.compute()
        self.log_dict({f"{stage}/{k}": v for k, v in values.items()}, prog_bar=stage == "val", sync_dist=True)
        metrics.reset()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["inputs"] = self.inputs
        if self.nap is not None:
            checkpoint["nap_statistics"] = {"mean": self.nap.mean, "projection": self.nap.projection}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("nap_statistics")
        self.nap = rapp.NapStatistics(**saved) if saved else None
        self.inputs = checkpoint.get("inputs")
        # a checkpoint from before features were standardised in the model: it only ever saw pixels
        state = checkpoint["state_dict"]
        mean = state.setdefault("input_mean", torch.zeros_like(self.input_mean))
        scale = state.setdefault("input_scale", torch.ones_like(self.input_scale))
        self.standardizes = bool(mean.any() or (scale != 1).any())

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every score of a batch (``scores``; ``score`` the chosen one) and its labels."""
        x, y = batch
        scores = self.scores(x)
        return {"score": scores[self.hparams.score]} | scores, y

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Fused Adam: one kernel for all parameters instead of several per tensor (faster per step on CPU
        # for these small MLPs; see docs/performance.md), the same update up to float rounding. Not under
        # mixed precision, where Lightning refuses to clip the gradients of an optimizer that unscales them.
        fused = self.device.type in ("cpu", "cuda") and "mixed" not in str(self.trainer.precision)
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused
        )
