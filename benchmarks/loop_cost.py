"""Where the framework's extra time per step goes: Lightning's own loop, or what this project adds to it.

``python -m benchmarks.loop_cost [--n-layers 2] [--batch-size 128] [--repeats 5]``

On CPU, two Lightning runs per repeat, each taking turns with a fresh reference loop as in
``benchmarks.train_speed`` (``--settle`` untimed steps, then ``--block`` timed ones):

1. Lightning, model only: a ``LightningModule`` holding the same model, whose ``training_step`` returns
   the loss, with the same fused Adam, the same DataModule and ``gradient_clip_val``, and no logger,
   progress bar, checkpointing or model summary;
2. framework: ``benchmarks.train_speed``'s framework path (the project's ``AnomalyAutoEncoder``,
   ``train/loss`` and ``train/g_norm`` logged every step to CSV, the progress bar).

Each run gives each path's ms per step and the reference's, measured in the same stretches of time.
Prints the medians over the repeats: what Lightning's loop adds to a plain loop's step, and what the
project adds on top of that; writes them to ``bench_results/loop_cost-<time>.json``.
"""

import argparse
import statistics
import tempfile
import warnings
from datetime import datetime
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch import LightningModule

from benchmarks.train_speed import (
    CLIP,
    ReferenceLoop,
    Setup,
    _Interleave,
    add_turn_arguments,
    framework,
    make_model,
    make_optimizer,
    parse_turns,
    save_result,
    write_fake_emnist,
)
from src.data.datamodule import OneClassDataModule
from src.models.components.loss import autoencoder_loss
from src.runtime.process import skip_unloadable_nvml_check


class _ModelOnly(LightningModule):
    """The least a ``LightningModule`` needs to train the bench's model."""

    def __init__(self, n_layers: int, setup: Setup) -> None:
        super().__init__()
        self.net = make_model(n_layers, setup)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, _ = batch
        return autoencoder_loss(x, self.net(x).x_hat, beta=1.0)["loss"]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return make_optimizer(self.net)


def model_only(root: Path, n_layers: int, batch: int, interleave: _Interleave) -> None:
    """Trains ``_ModelOnly`` on the framework's DataModule, the plain loops interleaved with its steps."""
    dm = OneClassDataModule("emnist", root=str(root), anomaly_class=0, batch_size=batch)
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_steps=interleave.total_steps + 1, gradient_clip_val=CLIP,
        logger=False, enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0, callbacks=[interleave],
    )  # fmt: skip
    with warnings.catch_warnings():  # the DataModule has a val loader; limit_val_batches=0 never runs it
        warnings.filterwarnings("ignore", "You passed in a `val_dataloader` but have no `validation_step`")
        trainer.fit(_ModelOnly(n_layers, interleave.setup), datamodule=dm)


PATHS = {"model_only": model_only, "framework": framework}


def measure(root: Path, x_train: torch.Tensor, args: argparse.Namespace) -> dict:
    """``args.repeats`` rounds of both Lightning paths; each path's and its reference's ms per step."""
    setup = Setup("cpu")
    runs: dict[str, list[dict]] = {path: [] for path in PATHS}
    for _ in range(args.repeats):
        for path, run in PATHS.items():
            reference = ReferenceLoop(x_train, args.n_layers, args.batch_size, setup)
            interleave = _Interleave([reference], args.steps, args.block, args.warmup, setup, args.settle)
            run(root, args.n_layers, args.batch_size, interleave)
            ms = [s / args.steps * 1000 for s in interleave.seconds]
            runs[path].append({"ms": ms[0], "reference_ms": ms[1], "extra_ms": ms[0] - ms[1]})
    return {
        path: {key: statistics.median(r[key] for r in rs) for key in rs[0]} | {"runs": rs}
        for path, rs in runs.items()
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=200_000)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    add_turn_arguments(p, repeats=5)
    p.add_argument("--out", type=Path, default=Path("bench_results"))
    args = parse_turns(p, argv)
    skip_unloadable_nvml_check()  # as in benchmarks.train_speed; see src.runtime.process
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fake_emnist(root, args.n_train, 1000)
        dm = OneClassDataModule("emnist", root=str(root), anomaly_class=0)
        dm.setup("fit")
        paths = measure(root, dm.data_train.x, args)
    result = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "lightning": L.__version__,
        **{k: v for k, v in vars(args).items() if k != "out"},
        **paths,
    }
    print_table(result)
    save_result(result, args.out, "loop_cost")
    return result


def print_table(r: dict) -> None:
    print(f"\nms per step, n_layers={r['n_layers']}, batch {r['batch_size']}, CPU; medians over "
          f"{r['repeats']} runs of {r['steps']} timed steps, each run taking turns with its own "
          "reference:")  # fmt: skip
    print("| path | ms per step | its reference | over its reference | added by |")
    print("|---|---|---|---|---|")
    m, f = r["model_only"], r["framework"]
    print(f"| Lightning, model only | {m['ms']:.2f} | {m['reference_ms']:.2f} | {m['extra_ms']:+.2f} "
          "| Lightning's loop (and the DataModule's loader) |")  # fmt: skip
    print(f"| framework | {f['ms']:.2f} | {f['reference_ms']:.2f} | {f['extra_ms']:+.2f} "
          f"| this project: {f['extra_ms'] - m['extra_ms']:+.2f} over model only |")  # fmt: skip


if __name__ == "__main__":
    main()
