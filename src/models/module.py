"""The Lightning system that trains and evaluates every variant (AE, VAE, RAE, RVAE)."""

from contextlib import nullcontext
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torchmetrics import MeanMetric

from src.models import rapp
from src.models.components.autoencoder import AutoEncoder, OutputType
from src.models.components.backbone import BlockType
from src.models.components.loss import autoencoder_loss
from src.models.metrics import AnomalyMetrics
from src.models.settings import SCORES, ScoreType, check_model_settings

# NAP's statistics come from at most this many training normals (a fixed subset, ``normal_dataloader``):
# enough for the SVD of a pathway of a few thousand dimensions, and seconds to fit at each validation.
NAP_FIT_SAMPLES = 4096


class AnomalyAutoEncoder(LightningModule):
    """Trains an ``AutoEncoder`` on normal data and scores held-out data (higher = more anomalous).

    Logs ``train/epoch_loss`` every epoch, ``val/auroc`` and ``val/auprc`` at each validation, and at test
    ``test/auroc`` and ``test/auprc`` of ``score``'s score, every score's (``test/auroc_recon``, ``_sap``,
    ``_nap``) and each pathway layer's alone (``test/auroc_layer_<i>``: 0 the input, last the code). The
    per-step ``train/loss``, ``train/g_norm`` and the divergence check are ``TrainingMonitor``'s.

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
        score: the score behind ``val/auroc``, the best checkpoint and ``test/auroc``: ``recon`` (the
            reconstruction error, the study's), or RaPP's ``sap`` or ``nap`` (``src.models.rapp``).
        output: the decoder's last step, ``sigmoid`` (pixels) or ``linear`` (raw features, standardised
            inside the model by ``input_mean`` and ``input_scale``); None: the data's choice, filled in
            by ``src.train`` (``sigmoid`` for a model built by hand).
        nap_input: whether the input space (``h_0 = x``) enters NAP, as RaPP defines it.
        compile: ``torch.compile`` the network's training forward (``nn.Module.compile``, so
            checkpoints keep their keys); see ``compile_stance``.
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
        if compile:  # on CPU 8-27 % more samples a second at n_layers=6, none clear at 2 (performance.md)
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

    def scores(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every score per sample (``src.models.rapp.scores``)."""
        return rapp.scores(self.net, self.standardize(x), self.nap, nap_from=self.nap_from)

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_scale if self.standardizes else x

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
            # Computed once over the whole epoch (``src.models.metrics``); under DDP every rank holds the
            # same gathered values, and ``sync_dist`` only keeps Lightning from warning that they are not.
            values = {f"val/{k}": v for k, v in self.val_metrics.compute().items()}
            self.log_dict(values, prog_bar=True, sync_dist=True)
            self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        # With ``nap`` the tested checkpoint brought the statistics it was validated with; otherwise
        # they are fitted now, on the tested weights.
        if self.hparams.score != "nap" or self.nap is None:
            self.fit_nap_on_training_normals()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        if self.labelled:
            for name, value in self.scores(x).items():
                self.test_metrics[name].update(value, y)

    def on_test_epoch_end(self) -> None:
        if not self.labelled:
            return
        results = {name: metric.compute() for name, metric in self.test_metrics.items()}
        values = {f"test/{k}": v for k, v in results[self.hparams.score].items()}
        values |= {f"test/auroc_{name}": result["auroc"] for name, result in results.items()}
        values |= {f"test/auprc_{name}": results[name]["auprc"] for name in SCORES}
        self.log_dict(values, sync_dist=True)  # as at validation
        for metric in self.test_metrics.values():
            metric.reset()

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every score of a batch (``scores``; ``score`` the chosen one) and its labels."""
        x, y = batch
        scores = self.scores(x)
        return {"score": scores[self.hparams.score]} | scores, y

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Fused Adam: one kernel for all parameters, 10-20 % faster a step on CPU for these small MLPs
        # (docs/performance.md), the same update up to float rounding. Not under mixed precision, where
        # Lightning refuses to clip the gradients of an optimizer that unscales them itself.
        fused = self.device.type in ("cpu", "cuda") and "mixed" not in str(self.trainer.precision)
        return torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay, fused=fused
        )

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
                "NAP is fitted on the training normals of the DataModule's normal_dataloader: pass "
                "datamodule=OneClassDataModule(...) to the Trainer's fit and test."
            )
        self.fit_nap(datamodule.normal_dataloader(NAP_FIT_SAMPLES))

    def compile_stance(self, batch_size: int):
        """Compile for the largest batch so far; run a smaller one (an epoch's last) on the graphs
        already compiled, or eagerly: compiling a second graph costs seconds, for one batch an epoch."""
        if not self.hparams.compile:
            return nullcontext()
        if batch_size < self.compiled_batch_size:
            return torch.compiler.set_stance("eager_on_recompile")
        self.compiled_batch_size = batch_size
        return nullcontext()
