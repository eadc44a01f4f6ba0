"""Checks that need a CUDA device (``make test-gpu``; ``benchmarks/gpu_check.sh`` runs them on a lent
GPU). This module imports nothing that a bare PyTorch + Lightning image lacks beyond Hydra."""

from pathlib import Path

import pytest
import torch

from benchmarks.train_speed import main as bench
from src.eval import evaluate
from src.train import train
from tests.conftest import epoch_losses, eval_cfg

pytestmark = pytest.mark.gpu


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
