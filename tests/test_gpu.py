"""Checks that need a CUDA device (``make test-gpu``; ``benchmarks/gpu_check.sh`` runs them on a lent
GPU). This module imports nothing that a bare PyTorch + Lightning image lacks beyond Hydra."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback
from omegaconf import open_dict

from benchmarks.train_speed import main as bench
from src.eval import evaluate
from src.train import train
from tests.conftest import epoch_losses, eval_cfg

pytestmark = pytest.mark.gpu


def test_on_a_gpu_the_data_lives_on_the_device(make_cfg) -> None:
    _, objects = train(make_cfg("trainer=gpu", "trainer.max_epochs=1"))
    dm = objects["datamodule"]
    assert dm.data_train.x.device.type == "cuda" and dm.data_train.x.dtype == torch.uint8
    x, y = next(iter(dm.train_dataloader()))  # indexed and converted on the device
    assert x.device.type == y.device.type == "cuda" and x.dtype == torch.float32


class _NoSyncInSteps(Callback):
    """Makes any host-device synchronisation inside a training step an error (CUDA's sync debug mode),
    from the second epoch on (the first compiles and warms up)."""

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.current_epoch >= 1:
            torch.cuda.set_sync_debug_mode("error")

    def on_train_batch_end(self, *args) -> None:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("option", ["trainer.precision=32-true", "trainer.precision=bf16-mixed"])
def test_a_gpu_training_step_never_waits_for_the_device(make_cfg, option: str) -> None:
    cfg = make_cfg("trainer=gpu", "trainer.max_epochs=3", option)
    with open_dict(cfg):
        cfg.callbacks.no_sync = {"_target_": "tests.test_gpu._NoSyncInSteps"}
        cfg.trainer.enable_progress_bar = True  # the default run's bar, redrawn every 20 steps, too
    metrics, _ = train(cfg)  # a sync inside a step raises there, naming the operation
    assert metrics["status"] == "completed" and metrics["global_step"] > 32


def test_gpu_speed_options_keep_the_loss_curve(make_cfg, tmp_path: Path) -> None:
    eager = epoch_losses(make_cfg, tmp_path, "eager", "trainer=gpu")
    other_seed = epoch_losses(make_cfg, tmp_path, "seed1", "trainer=gpu", "seed=1")
    noise = max(abs(a - b) for a, b in zip(eager, other_seed, strict=True))
    for option in ("model.compile=true", "trainer.precision=bf16-mixed", "float32_matmul_precision=high"):
        fast = epoch_losses(make_cfg, tmp_path, option.split("=")[0], "trainer=gpu", option)
        # the option moves the curve no further than changing the seed does (plus float rounding)
        worst = max(abs(a - b) for a, b in zip(eager, fast, strict=True))
        assert len(fast) == 4 and worst <= noise + 1e-3 * eager[-1], (option, eager, fast, other_seed)


def test_a_gpu_trained_checkpoint_scores_the_same_with_src_eval_on_gpu_and_cpu(make_cfg, tmp_path) -> None:
    record, _ = train(make_cfg("trainer=gpu", "trainer.max_epochs=2"))
    for device in ("gpu", "cpu"):
        cfg = eval_cfg(
            tmp_path / f"eval_{device}", f"ckpt_path={record['best_checkpoint']}", f"trainer={device}"
        )
        # float rounding differs between devices; AUROC moves only if it swaps the order of two scores
        assert evaluate(cfg)["test/auroc"] == pytest.approx(record["test/auroc"], abs=1e-3), device


def test_the_bench_runs_on_the_gpu(tmp_path: Path) -> None:
    args = ["--n-train", "3000", "--n-test", "2000", "--n-layers", "1", "--batch-sizes", "64",
            "--steps", "4", "--block", "2", "--warmup", "1", "--repeats", "1",
            "--memory-n-train", "3000", "--device", "cuda", "--out", str(tmp_path)]  # fmt: skip
    result = bench(args)
    assert result["device_name"] == torch.cuda.get_device_name() and result["rows"][0]["framework_sps"] > 0
    assert result["memory"]["run"]["peak_gpu_mib"] > 0
