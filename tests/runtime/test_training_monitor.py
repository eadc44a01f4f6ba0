"""The TrainingMonitor: per-step values to the loggers at their cadence, the raw gradient norm, and a stop
at the first non-finite step with the weights from before it."""

import csv
from pathlib import Path

import hydra
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger

from src.models.module import AnomalyAutoEncoder
from src.runtime.callbacks.training_monitor import DivergedError, TrainingMonitor
from src.train import train


class LossTurnsNanAt(AnomalyAutoEncoder):
    """The loss of step ``BAD_STEP`` is NaN while the weights stay finite; every later step is finite."""

    BAD_STEP = 7

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.global_step == self.BAD_STEP:
            loss = loss * float("nan")
            self.step_losses["train/loss"] = loss.detach()
        return loss


class _Watch(Callback):
    """Keeps the parameters as they were when step ``BAD_STEP`` started, and every raw gradient norm,
    computed here independently (the 2-norm of all gradients, concatenated)."""

    def __init__(self) -> None:
        self.before, self.norms = None, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == LossTurnsNanAt.BAD_STEP:
            self.before = {k: v.clone() for k, v in pl_module.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = torch.cat([p.grad.flatten() for p in pl_module.parameters() if p.grad is not None])
        self.norms.append(float(grads.double().norm()))


def _csv_rows(output_dir: str | Path) -> list[dict]:
    with open(Path(output_dir) / "csv" / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


def _fit(cfg, model_cls, tmp_path: Path, **trainer_args) -> tuple:
    datamodule = hydra.utils.instantiate(cfg.data)
    settings = {k: v for k, v in cfg.model.items() if k != "_target_"}
    model = model_cls(input_dim=datamodule.input_dim, **settings)
    watch = _Watch()
    logger = CSVLogger(tmp_path, name="csv", version="")
    callbacks = [watch, TrainingMonitor()]
    trainer = Trainer(max_epochs=2, logger=logger, callbacks=callbacks, gradient_clip_val=1.0,
                      enable_progress_bar=False, enable_checkpointing=False, **trainer_args)  # fmt: skip
    return trainer, model, watch, datamodule


@pytest.mark.parametrize("every", [1, 5])
def test_the_raw_gradient_norm_and_losses_reach_the_loggers_at_their_cadence(
    make_cfg, tmp_path, every
) -> None:
    trainer, model, watch, datamodule = _fit(
        make_cfg(), AnomalyAutoEncoder, tmp_path, log_every_n_steps=every
    )
    trainer.fit(model, datamodule=datamodule)
    rows = _csv_rows(tmp_path)
    steps = trainer.global_step  # 2 epochs of 16 steps
    assert [int(r["step"]) for r in rows] == [s for s in range(steps) if (s + 1) % every == 0]
    # the norm before clipping (clipping at 1.0 bounds what the optimizer sees, not what is logged)
    logged = [float(r["train/g_norm"]) for r in rows]
    assert logged == pytest.approx([watch.norms[int(r["step"])] for r in rows], rel=1e-5)
    assert max(watch.norms) > 1.0
    [monitor] = [c for c in trainer.callbacks if isinstance(c, TrainingMonitor)]
    assert monitor.g_norm_max == pytest.approx(max(watch.norms), rel=1e-5)
    assert all(r["epoch"] in ("0", "1") for r in rows) and "train/kl" in rows[0]  # the default model: RVAE


def test_a_non_finite_step_stops_the_run_before_the_optimizer_applies_it(make_cfg, tmp_path: Path) -> None:
    bad = LossTurnsNanAt.BAD_STEP
    trainer, model, watch, datamodule = _fit(make_cfg(), LossTurnsNanAt, tmp_path, log_every_n_steps=1)
    with pytest.raises(DivergedError) as err:
        trainer.fit(model, datamodule=datamodule)
    assert err.value.step == bad and err.value.reason == "train/loss is nan"
    assert 0 < err.value.last_finite_g_norm < float("inf")
    # the NaN step's update never reached the weights or Adam's state (BatchNorm's running statistics
    # follow each forward pass, the NaN step's too, as always)
    assert all(torch.equal(watch.before[k], v) for k, v in model.named_parameters())
    assert {int(s["step"]) for s in trainer.optimizers[0].state.values()} == {bad}
    # the loggers got every step up to the NaN one, and nothing after it
    rows = _csv_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == list(range(bad + 1)) and rows[-1]["train/loss"] == "nan"


def test_a_failing_run_keeps_every_logged_step_on_disk(make_cfg) -> None:
    fault = ["+callbacks.fault._target_=tests.helpers.faults.RaiseAtStep", "+callbacks.fault.step=20"]
    cfg = make_cfg("trainer.max_epochs=3", *fault)
    with pytest.raises(RuntimeError, match="injected failure at step 20"):
        train(cfg)
    assert [int(r["step"]) for r in _csv_rows(cfg.paths.output_dir)] == list(range(20))


def test_the_monitor_state_goes_into_checkpoints(make_cfg, tmp_path: Path) -> None:
    cfg = make_cfg("trainer.max_epochs=2")
    metrics, objects = train(cfg)
    saved = torch.load(metrics["best_checkpoint"], weights_only=True)
    [state] = [v for k, v in saved["callbacks"].items() if k.startswith("TrainingMonitor")]
    assert 0 < state["g_norm_max"] <= metrics["train/g_norm_max"]
    assert metrics["train/g_norm_max"] == max(
        float(r["train/g_norm"]) for r in _csv_rows(cfg.paths.output_dir)
    )
