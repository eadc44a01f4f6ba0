"""Per-step values (``train/loss``, ``train/g_norm``) wait on the device and are read back every
``model.host_sync_every`` steps: the same logs and the same weights as reading them every step, no
host read inside a training step in between, and a divergence still stops the run with the weights from
before it."""

import csv
import logging
from pathlib import Path

import hydra
import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.loggers import CSVLogger
from omegaconf import open_dict
from torch.overrides import TorchFunctionMode

from src.models.module import AnomalyAutoEncoder, _ReadBackOnException
from src.models.step_values import DivergedError, StepValues
from src.train import train

# Tensor methods that copy a value to the host; on a GPU each one waits for the device's queue.
HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
              torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.cpu}  # fmt: skip


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
    """Keeps the parameters as they were when step ``BAD_STEP`` started, counts the steps that started,
    and saves a checkpoint once ``save_at`` steps are done."""

    def __init__(self, save_at: int, path: str) -> None:
        self.save_at, self.path, self.started, self.before = save_at, path, 0, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.started += 1
        if trainer.global_step == LossTurnsNanAt.BAD_STEP:
            self.before = {k: v.clone() for k, v in pl_module.named_parameters()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.save_at:
            trainer.save_checkpoint(self.path)


class _CountHostReads(Callback):
    """Counts host reads of tensors made inside training steps (batch start to batch end)."""

    def __init__(self) -> None:
        self.reads, self.steps = 0, 0
        counter = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                counter.reads += func in HOST_READS
                return func(*args, **(kwargs or {}))

        self.mode = Mode()

    def on_train_batch_start(self, *args) -> None:
        self.steps += 1
        self.mode.__enter__()

    def on_train_batch_end(self, *args) -> None:
        self.mode.__exit__(None, None, None)


def _csv_rows(output_dir: str) -> list[dict]:
    with open(Path(output_dir) / "csv" / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("train/loss")]


def test_reading_back_every_50_steps_logs_and_trains_exactly_as_every_step(make_cfg, tmp_path: Path) -> None:
    runs = {}
    for every in (1, 50):
        cfg = make_cfg("trainer.max_epochs=2", f"model.host_sync_every={every}")
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / str(every))
        metrics, objects = train(cfg)
        runs[every] = metrics, _csv_rows(cfg.paths.output_dir), objects["model"].state_dict()
    (m1, rows1, w1), (m50, rows50, w50) = runs[1], runs[50]
    assert len(rows1) == m1["global_step"] > 20  # every step logged, across the epoch boundary
    assert rows50 == rows1  # same steps, epochs and values, in the same order
    assert all(torch.equal(w1[k], w50[k]) for k in w1)
    assert m50["train/g_norm_max"] == m1["train/g_norm_max"] == max(float(r["train/g_norm"]) for r in rows1)


def test_a_run_stopped_by_max_steps_mid_epoch_logs_its_last_steps(make_cfg) -> None:
    cfg = make_cfg("trainer.max_epochs=5", "trainer.max_steps=20", "model.host_sync_every=50")
    metrics, _ = train(cfg)
    # epochs of 16 steps: steps 16-19 are read back only when the cut-short epoch ends
    assert metrics["global_step"] == 20
    assert [int(r["step"]) for r in _csv_rows(cfg.paths.output_dir)] == list(range(20))


@pytest.mark.parametrize(("every", "reads_per_step"), [(1, 1), (50, 0)])
def test_no_host_read_inside_a_training_step_between_read_backs(make_cfg, every: int, reads_per_step) -> None:
    cfg = make_cfg("trainer.max_epochs=2", f"model.host_sync_every={every}")
    with open_dict(cfg):
        cfg.callbacks.count = {"_target_": "tests.test_step_values._CountHostReads"}
    _, objects = train(cfg)
    [count] = [c for c in objects["trainer"].callbacks if isinstance(c, _CountHostReads)]
    # epochs of 16 steps: with 50 the read-backs fall at each validation, outside the steps
    assert count.steps > 20 and count.reads == reads_per_step * count.steps


def test_a_divergence_found_late_leaves_the_weights_from_before_it(make_cfg, tmp_path: Path) -> None:
    bad = LossTurnsNanAt.BAD_STEP
    cfg = make_cfg("model.host_sync_every=50")
    datamodule = hydra.utils.instantiate(cfg.data)
    model = LossTurnsNanAt(input_dim=datamodule.input_dim, **model_args(cfg))
    watch = _Watch(save_at=bad + 3, path=str(tmp_path / "after.ckpt"))
    logger = CSVLogger(tmp_path, name="csv", version="")
    trainer = Trainer(max_epochs=2, logger=logger, log_every_n_steps=1, callbacks=[watch],
                      gradient_clip_val=10.0, enable_progress_bar=False,
                      enable_checkpointing=False)  # fmt: skip
    with pytest.raises(DivergedError) as err:
        trainer.fit(model, datamodule=datamodule)
    assert err.value.step == bad and err.value.reason == "train/loss is nan"
    assert 0 < err.value.last_finite_g_norm < float("inf")
    # Found when a checkpoint was about to be saved after steps bad + 1 and bad + 2; it was not written ...
    assert watch.started == bad + 3 and not (tmp_path / "after.ckpt").exists()
    # ... and neither the NaN step's update nor the two after it reached the weights or Adam's state
    # (BatchNorm's running statistics follow each forward pass, the NaN step's too, as always).
    assert all(torch.equal(watch.before[k], v) for k, v in model.named_parameters())
    assert {int(s["step"]) for s in trainer.optimizers[0].state.values()} == {bad}
    # The loggers got every step up to the NaN one, and nothing after it.
    rows = _csv_rows(str(tmp_path))
    assert [int(r["step"]) for r in rows] == list(range(bad + 1)) and rows[-1]["train/loss"] == "nan"


def test_a_failing_run_logs_the_steps_not_yet_read_back(make_cfg) -> None:
    fault = ["+callbacks.fault._target_=tests.faults.RaiseAtStep", "+callbacks.fault.step=20"]
    cfg = make_cfg("trainer.max_epochs=3", "model.host_sync_every=50", *fault)
    with pytest.raises(RuntimeError, match="injected failure at step 20"):
        train(cfg)
    # steps 16-19 (the second epoch's first) were still on the device when step 20 failed
    assert [int(r["step"]) for r in _csv_rows(cfg.paths.output_dir)] == list(range(20))


def model_args(cfg) -> dict:
    return {k: v for k, v in cfg.model.items() if k != "_target_"}


def test_fit_then_test_holds_one_read_back_callback_and_no_override_notice(make_cfg) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    lightning_log = logging.getLogger("lightning.pytorch")
    lightning_log.addHandler(handler)
    try:
        _, objects = train(make_cfg("trainer.max_epochs=1"))
    finally:
        lightning_log.removeHandler(handler)
    messages = [r.getMessage() for r in records]
    assert any("Restoring states from the checkpoint" in m for m in messages)  # test() ran, and was heard
    assert not [m for m in messages if "override existing callbacks" in m]
    assert sum(isinstance(c, _ReadBackOnException) for c in objects["trainer"].callbacks) == 1


def test_step_values_log_the_due_steps_in_one_read_and_stop_at_the_first_non_finite(tmp_path: Path) -> None:
    steps = StepValues()
    norms = [2.0, 5.0, float("nan"), 9.0]  # step 2 diverges
    for step, g_norm in enumerate(norms):
        values = {"train/loss": torch.tensor(1.0 / (step + 1)), "train/g_norm": torch.tensor(g_norm)}
        steps.add(step, epoch=0, due=step != 1, values=values)  # step 1 is not due for the loggers
    logger = CSVLogger(tmp_path, name="", version="")
    message = r"at step 2: train/g_norm is nan \(last finite train/g_norm: 5.0\)"
    with pytest.raises(DivergedError, match=message):
        steps.read_back([logger])
    logger.save()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    # the due steps up to the bad one, which is logged too; nothing after it
    assert [(r["step"], r["train/g_norm"]) for r in rows] == [("0", "2.0"), ("2", "nan")]
    assert steps.g_norm_max == 5.0 and len(steps) == 0  # the finite norms only; the pending ones are gone
    later = {"train/loss": torch.tensor(0.1), "train/g_norm": torch.tensor(7.0)}
    steps.add(4, epoch=1, due=True, values=later)
    steps.read_back([logger], check=False)
    assert steps.g_norm_max == 7.0 and steps.last_finite_g_norm == 7.0
    logger.save()
    last = list(csv.DictReader((tmp_path / "metrics.csv").open()))[-1]
    assert (last["step"], last["epoch"], last["train/loss"]) == ("4", "1", str(torch.tensor(0.1).item()))
