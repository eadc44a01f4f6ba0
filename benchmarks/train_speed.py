"""Training throughput of this framework against a hand-written PyTorch loop and a naive pipeline.

``python -m benchmarks.train_speed [--n-train 200000] [--n-layers 6] [--batch-sizes 128 512]``

All three paths train the same model (RAE, ``n_layers`` hidden units per side) with the same optimizer,
batch size and gradient clipping, on a fake EMNIST-sized dataset written in torchvision's raw format:

1. reference: a plain PyTorch loop over the in-memory uint8 tensor;
2. framework: the real ``OneClassDataModule`` + ``AnomalyAutoEncoder`` + Lightning ``Trainer``, logging
   ``train/loss`` and ``train/g_norm`` every step to CSV;
3. naive: ``torchvision.datasets.EMNIST`` with ``ToTensor()`` and a ``DataLoader``.

Each timing is repeated and the median reported, with ratios against the reference measured in the
same process. Results go to ``bench_results/train_speed-<time>.json``.
"""

import argparse
import json
import resource
import statistics
import tempfile
import time
from datetime import datetime
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from src.data.datamodule import OneClassDataModule
from src.metrics import AnomalyMetrics
from src.models.components.autoencoder import AutoEncoder
from src.models.components.loss import autoencoder_loss
from src.models.module import AnomalyAutoEncoder

N_TEST = 116_323  # EMNIST byclass test split
CLIP = 10.0


def write_fake_emnist(root: Path, n_train: int, n_test: int) -> None:
    """Random digits-like images in EMNIST byclass's raw IDX layout (62 classes)."""
    rng = np.random.default_rng(0)
    raw = root / "EMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for part, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 62, size=n, dtype=np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            header = bytes([0, 0, 8, arr.ndim]) + b"".join(d.to_bytes(4, "big") for d in arr.shape)
            (raw / f"emnist-byclass-{part}-{kind}-ubyte").write_bytes(header + arr.tobytes())


def make_model(n_layers: int) -> AutoEncoder:
    torch.manual_seed(0)
    return AutoEncoder(784, latent_dim=16, hidden_dim=256, n_layers=n_layers, residual=True)


def reference_loop(x_uint8: torch.Tensor, n_layers: int, batch: int, steps: int, warmup: int) -> float:
    """Samples/s of the fastest plain loop: index the uint8 tensor, convert one batch, step."""
    model = make_model(n_layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    perm = torch.randperm(len(x_uint8))
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        idx = perm[(i * batch) % (len(perm) - batch) :][:batch]
        x = x_uint8[idx].float().div_(255)
        out = model(x)
        loss = autoencoder_loss(x, out.x_hat)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        g_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        _ = float(loss), float(g_norm)  # what a logger would read each step
    return steps * batch / (time.perf_counter() - t0)


class _Timer(Callback):
    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1 = warmup, 0.0, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer, pl_module) -> None:
        self.t1 = time.perf_counter()


def framework(
    dm: OneClassDataModule, n_layers: int, batch: int, steps: int, warmup: int, log_dir: str
) -> float:
    """Samples/s through the real DataModule, LightningModule and Trainer with per-step logging."""
    dm.hparams.batch_size = batch
    torch.manual_seed(0)
    model = AnomalyAutoEncoder(784, n_layers=n_layers, hidden_dim=256, latent_dim=16, residual=True)
    timer = _Timer(warmup)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=warmup + steps, gradient_clip_val=CLIP, logger=CSVLogger(log_dir),
        log_every_n_steps=1, limit_val_batches=0, num_sanity_val_steps=0, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    return steps * batch / (timer.t1 - timer.t0)


def naive(root: Path, n_layers: int, batch: int, steps: int, warmup: int) -> float:
    """Samples/s of torchvision's EMNIST + ToTensor + DataLoader feeding the same loop."""
    ds = datasets.EMNIST(str(root), split="byclass", train=True, transform=transforms.ToTensor())
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)
    model = make_model(n_layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    t0 = 0.0
    for i, (x, _) in enumerate(loader):
        if i == warmup:
            t0 = time.perf_counter()
        if i == warmup + steps:
            break
        x = x.flatten(1)
        loss = autoencoder_loss(x, model(x).x_hat)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def auroc_time(n: int) -> float:
    scores = torch.rand(n) * 5000
    target = (torch.rand(n) < 0.35).long()
    t0 = time.perf_counter()
    metric = AnomalyMetrics()
    for s, t in zip(scores.split(1024), target.split(1024), strict=True):
        metric.update(s, t)
    metric.compute()
    return time.perf_counter() - t0


def median(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def interleaved_medians(fns: list, repeats: int) -> list[float]:
    """Median of each timing, the timings taking turns so that a slow spell of a shared machine
    falls on all of them rather than on whichever happened to run then."""
    samples = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, samples, strict=True):
            out.append(fn())
    return [statistics.median(s) for s in samples]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=200_000)
    p.add_argument("--n-layers", type=int, nargs="+", default=[2, 6])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--naive-steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench_results"))
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fake_emnist(root, args.n_train, N_TEST)
        t0 = time.perf_counter()
        dm = OneClassDataModule("emnist", root=str(root), anomaly_class=0)
        dm.setup("fit")
        setup_s = time.perf_counter() - t0
        x_train = dm.data_train.x
        rows = []
        for n_layers in args.n_layers:
            for batch in args.batch_sizes:
                ref, fw, nv = interleaved_medians(
                    [
                        partial(reference_loop, x_train, n_layers, batch, args.steps, args.warmup),
                        partial(framework, dm, n_layers, batch, args.steps, args.warmup, tmp),
                        partial(naive, root, n_layers, batch, args.naive_steps, 2),
                    ],
                    args.repeats,
                )
                rows.append({"n_layers": n_layers, "batch_size": batch, "reference_sps": ref,
                             "framework_sps": fw, "naive_sps": nv, "framework_over_reference": fw / ref,
                             "framework_over_naive": fw / nv})  # fmt: skip
        result = {
            "date": datetime.now().isoformat(timespec="seconds"),
            "device": "cpu",
            "torch_threads": torch.get_num_threads(),
            "n_train_images": args.n_train,
            "datamodule_setup_s": setup_s,
            "test_auroc_s": median(lambda: auroc_time(N_TEST), args.repeats),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rows": rows,
        }
    print_table(result)
    args.out.mkdir(exist_ok=True)
    path = args.out / f"train_speed-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {path}")
    return result


def print_table(r: dict) -> None:
    print(f"\n{r['n_train_images']:,} training images, CPU, {r['torch_threads']} threads, {r['date']}")
    print("| n_layers | batch | reference samples/s | framework samples/s | naive samples/s "
          "| framework / reference | framework / naive |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for row in r["rows"]:
        print(f"| {row['n_layers']} | {row['batch_size']} | {row['reference_sps']:,.0f} "
              f"| {row['framework_sps']:,.0f} | {row['naive_sps']:,.0f} "
              f"| {row['framework_over_reference']:.2f} | {row['framework_over_naive']:.1f}x |")  # fmt: skip
    print(f"\nDataModule set-up (decode + split): {r['datamodule_setup_s']:.2f} s")
    print(f"test AUROC over {N_TEST:,} scores: {r['test_auroc_s'] * 1000:.0f} ms")
    print(f"peak RSS: {r['peak_rss_mib']:,.0f} MiB")


if __name__ == "__main__":
    main()
