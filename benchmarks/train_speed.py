"""Training throughput of this framework against a hand-written PyTorch loop and a naive pipeline.

``python -m benchmarks.train_speed [--n-train 200000] [--n-layers 2 6] [--batch-sizes 128 512]
[--device auto|cpu|cuda] [--compile] [--precision 32-true|bf16-mixed]``

All three paths train the same model (RAE, ``n_layers`` hidden units per side) with the same optimizer,
batch size, gradient clipping, compilation and precision, on a fake EMNIST-sized dataset written in
torchvision's raw format:

1. reference: a plain PyTorch loop over the in-memory uint8 tensor (on the GPU, if one is used);
2. framework: the real ``OneClassDataModule`` + ``AnomalyAutoEncoder`` + Lightning ``Trainer``, logging
   ``train/loss`` and ``train/g_norm`` every step to CSV, with the progress bar of
   ``conf/callbacks/default.yaml`` (on stderr);
3. naive: ``torchvision.datasets.EMNIST`` with ``ToTensor()`` and a ``DataLoader``, each batch copied
   to the device.

The three are timed in the same stretches of time: they take turns, and each turn of a path is
``--settle`` untimed steps (caches refilling after the other paths' turns) and ``--block`` timed ones.
Each run gives one ratio per pair of paths; the medians over ``--repeats`` fresh runs are
reported, with the range of framework / reference. Memory and the DataModule's set-up time are
measured separately, in a fresh process that trains on byclass-sized data (``--memory-n-train``,
default 697,932 images) and decodes its raw files. Results go to
``bench_results/train_speed-<time>.json``.
"""

import argparse
import json
import multiprocessing
import resource
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext, redirect_stdout
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from src.data.datamodule import OneClassDataModule
from src.models.components.autoencoder import AutoEncoder
from src.models.components.loss import autoencoder_loss
from src.models.metrics import AnomalyMetrics
from src.models.module import AnomalyAutoEncoder
from src.runtime.process import skip_unloadable_nvml_check
from tests.helpers.idx import write_idx

REPO = Path(__file__).resolve().parents[1]
N_TEST = 116_323  # EMNIST byclass test split
N_BYCLASS_TRAIN = 697_932
CLIP = 10.0


@dataclass(frozen=True)
class Setup:
    """What every path shares: where it runs and how the model is executed."""

    device: str  # "cpu" or "cuda"
    compile: bool = False
    precision: str = "32-true"  # Lightning's name; "bf16-mixed" = autocast to bfloat16

    def autocast(self):
        if self.precision == "bf16-mixed":
            return torch.autocast(self.device, dtype=torch.bfloat16)
        return nullcontext()

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def write_fake_emnist(root: Path, n_train: int, n_test: int) -> None:
    """Random images in EMNIST byclass's raw IDX layout (62 classes), through the tests' IDX writer."""
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("test", n_test)):
        prefix = root / "EMNIST" / "raw" / f"emnist-byclass-{part}"
        write_idx(Path(f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        write_idx(Path(f"{prefix}-labels-idx1-ubyte"), rng.integers(0, 62, size=n, dtype=np.uint8))


def make_model(n_layers: int, setup: Setup) -> AutoEncoder:
    torch.manual_seed(0)
    model = AutoEncoder(
        784,
        latent_dim=16,
        hidden_dim=256,
        n_layers=n_layers,
        residual=True,
        variational=False,
        block="preact",
        output="sigmoid",
    )
    model.to(setup.device)
    if setup.compile:
        torch.compiler.reset()  # as AnomalyAutoEncoder does: each path compiles afresh
        model.compile()
    return model


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The framework's optimizer (``AnomalyAutoEncoder.configure_optimizers``), so that only the
    pipeline around the model differs between the three paths."""
    return torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)


def train_step(model, opt, x: torch.Tensor, setup: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    with setup.autocast():
        out = model(x)
    loss = autoencoder_loss(x, out.x_hat, beta=1.0)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    g_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    opt.step()
    return loss, g_norm


class ReferenceLoop:
    """The fastest plain loop: index the uint8 tensor on the device, convert one batch, step, keep the
    loss and norm on the device, and read a block's values back in one copy at its end, as a logger
    would (a read every step would make a GPU's host wait for its queue each step). Runs a block of
    steps at a time."""

    def __init__(self, x_uint8: torch.Tensor, n_layers: int, batch: int, setup: Setup) -> None:
        self.model, self.x = make_model(n_layers, setup), x_uint8.to(setup.device)
        self.opt = make_optimizer(self.model)
        self.perm = torch.randperm(len(self.x), device=setup.device)
        self.batch, self.setup, self.i = batch, setup, 0

    def next_batch(self) -> torch.Tensor:
        start = (self.i * self.batch) % (len(self.perm) - self.batch)
        self.i += 1
        return self.x[self.perm[start : start + self.batch]].float().div_(255)

    def run(self, steps: int) -> float:
        """Seconds taken by ``steps`` training steps."""
        self.setup.sync()
        t0 = time.perf_counter()
        values = []
        for _ in range(steps):
            loss, g_norm = train_step(self.model, self.opt, self.next_batch(), self.setup)
            values += [loss.detach(), g_norm]
        _ = torch.stack(values).tolist()  # what a logger reads
        self.setup.sync()
        return time.perf_counter() - t0


class NaiveLoop(ReferenceLoop):
    """torchvision's EMNIST + ToTensor + DataLoader feeding the same loop, each batch copied to the
    device."""

    def __init__(self, root: Path, n_layers: int, batch: int, setup: Setup) -> None:
        ds = datasets.EMNIST(str(root), split="byclass", train=True, transform=transforms.ToTensor())
        self.loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0)
        self.batches = iter(self.loader)
        self.model = make_model(n_layers, setup)
        self.opt = make_optimizer(self.model)
        self.setup = setup

    def next_batch(self) -> torch.Tensor:
        x = next(self.batches, None)
        if x is None:  # a new epoch
            self.batches = iter(self.loader)
            x = next(self.batches)
        return x[0].flatten(1).to(self.setup.device)


def check_turns(steps: int, block: int, settle: int) -> None:
    """Raise ``ValueError`` naming the turn setting that cannot be run."""
    if block < 1:
        raise ValueError(f"--block={block} must be at least 1: the timed steps of each turn")
    if settle < 0:
        raise ValueError(f"--settle={settle} must be at least 0: the untimed steps that start each turn")
    if steps % block:
        raise ValueError(f"--steps={steps} must be a multiple of --block={block}")


def add_turn_arguments(p: argparse.ArgumentParser, repeats: int) -> None:
    """The options of how the paths take turns, and of how many runs there are."""
    p.add_argument("--steps", type=int, default=200, help="timed steps of each path per run")
    p.add_argument("--block", type=int, default=10, help="steps of one path before the next takes its turn")
    p.add_argument(
        "--settle",
        type=int,
        default=3,
        help="untimed steps at the start of each path's turn, before its --block timed ones",
    )
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--repeats", type=int, default=repeats, help="fresh runs; medians are reported")


def parse_turns(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; a turn setting or ``--repeats`` that cannot be run is an argparse error, before
    any work."""
    args = p.parse_args(argv)
    try:
        check_turns(args.steps, args.block, args.settle)
    except ValueError as err:
        p.error(str(err))
    if args.repeats < 1:
        p.error(f"--repeats={args.repeats} must be at least 1")
    return args


class _Interleave(Callback):
    """Times the framework's training steps in turns, and between two turns runs a turn of each plain
    loop. Every path is then measured in the same stretches of time, so a slow spell of a shared machine
    falls on all of them and the ratios stay put, where whole runs measured one after the other do not.

    A turn is ``settle`` untimed steps, then ``block`` timed ones. The first steps after another path's
    turn run on caches that path has filled with its own data, and the framework, with more code and
    objects per step, takes longer to get back to speed than a plain loop. A real run never switches
    like this, so those steps are left out. Work the framework does every N steps still falls on timed
    and untimed steps in proportion, as long as the turn's length is prime to N (the default 13, against
    20, 50 and 100).

    ``seconds[0]`` is the framework's time, ``seconds[1:]`` that of each plain loop; each spans
    ``steps`` steps once ``trainer.fit`` has run ``total_steps + 1`` steps."""

    def __init__(
        self, loops: list[ReferenceLoop], steps: int, block: int, warmup: int, setup: Setup, settle: int = 0
    ) -> None:
        check_turns(steps, block, settle)
        self.loops, self.steps, self.block, self.warmup, self.setup = loops, steps, block, warmup, setup
        self.settle, self.turns = settle, steps // block
        self.total_steps = warmup + self.turns * (settle + block)
        self.seconds = [0.0] * (len(loops) + 1)
        self.t0: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        done = trainer.global_step - self.warmup
        turn, pos = divmod(done, self.settle + self.block)
        if done < 0 or turn > self.turns or pos not in (0, self.settle):
            return
        self.setup.sync()
        if pos == 0:
            if self.t0 is not None:  # the end of the framework's turn
                self.seconds[0] += time.perf_counter() - self.t0
                self.t0 = None
            elif done == 0:  # the plain loops warm up too, untimed
                for loop in self.loops:
                    loop.run(self.warmup)
            if turn == self.turns:
                return
            for i, loop in enumerate(self.loops, 1):
                if self.settle:
                    loop.run(self.settle)
                self.seconds[i] += loop.run(self.block)
        if pos == self.settle:
            self.t0 = time.perf_counter()


class _TimedDataModule(OneClassDataModule):
    setup_s = 0.0

    def setup(self, stage: str | None = None) -> None:
        t0 = time.perf_counter()
        super().setup(stage)
        self.setup_s += time.perf_counter() - t0


def framework(root: Path, n_layers: int, batch: int, interleave: _Interleave) -> float:
    """Runs the real DataModule, LightningModule and Trainer with per-step CSV logging, the plain loops
    interleaved with its steps; returns the DataModule's set-up time. It is set up inside the fit, as in
    a real run, so on a GPU its data lives there."""
    setup = interleave.setup
    dm = _TimedDataModule("emnist", root=str(root), anomaly_class=0, batch_size=batch)
    torch.manual_seed(0)
    model = AnomalyAutoEncoder(784, n_layers=n_layers, hidden_dim=256, latent_dim=16, residual=True,
                               compile=setup.compile)  # fmt: skip
    bar = hydra.utils.instantiate(OmegaConf.load(REPO / "conf/callbacks/default.yaml").progress_bar)
    with tempfile.TemporaryDirectory() as log_dir:
        trainer = L.Trainer(
            accelerator="gpu" if setup.device == "cuda" else "cpu", devices=1, precision=setup.precision,
            max_steps=interleave.total_steps + 1, gradient_clip_val=CLIP,
            logger=CSVLogger(log_dir), log_every_n_steps=1, limit_val_batches=0, num_sanity_val_steps=0,
            enable_checkpointing=False, enable_model_summary=False, callbacks=[interleave, bar],
        )  # fmt: skip
        with redirect_stdout(sys.stderr):  # Lightning's bar draws on stdout; the table goes there
            trainer.fit(model, datamodule=dm)
    return dm.setup_s


def measure_row(
    root: Path, x_train: torch.Tensor, n_layers: int, batch: int, args: argparse.Namespace, setup: Setup
) -> dict:
    """``args.repeats`` fresh runs of all three paths, interleaved; medians of the samples/s and of the
    per-run ratios, and the range of framework / reference over the runs."""
    runs = []
    for _ in range(args.repeats):
        loops = [ReferenceLoop(x_train, n_layers, batch, setup), NaiveLoop(root, n_layers, batch, setup)]
        interleave = _Interleave(loops, args.steps, args.block, args.warmup, setup, args.settle)
        framework(root, n_layers, batch, interleave)
        fw, ref, nv = (args.steps * batch / s for s in interleave.seconds)
        runs.append({"framework_sps": fw, "reference_sps": ref, "naive_sps": nv,
                     "framework_over_reference": fw / ref, "framework_over_naive": fw / nv,
                     "reference_over_naive": ref / nv})  # fmt: skip
    row = {"n_layers": n_layers, "batch_size": batch}
    row |= {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    ratios = [run["framework_over_reference"] for run in runs]
    return row | {"framework_over_reference_range": [min(ratios), max(ratios)], "runs": runs}


def auroc_time(n: int, device: str) -> float:
    scores = torch.rand(n, device=device) * 5000
    target = (torch.rand(n, device=device) < 0.35).long()
    t0 = time.perf_counter()
    metric = AnomalyMetrics().to(device)
    for s, t in zip(scores.split(1024), target.split(1024), strict=True):
        metric.update(s, t)
    float(metric.compute()["auroc"])
    return time.perf_counter() - t0


def peak_rss_mib() -> float:
    """This process's peak resident memory. Linux's ``VmHWM`` rather than ``ru_maxrss``: a spawned
    child's ``ru_maxrss`` keeps the high-water mark of the parent it was forked from."""
    status = Path("/proc/self/status")
    if status.exists():
        return int(status.read_text().split("VmHWM:")[1].split()[0]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # macOS reports bytes


def memory_child(root: str, n_layers: int, batch: int, steps: int, setup: Setup) -> dict:
    """In a fresh process: one training run; its DataModule's set-up time and the peak memory."""
    skip_unloadable_nvml_check()
    setup_s = framework(Path(root), n_layers, batch, _Interleave([], steps, steps, 1, setup))
    out = {"datamodule_setup_s": setup_s, "peak_rss_mib": peak_rss_mib()}
    if setup.device == "cuda":
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def measure_memory(n_train: int, n_layers: int, batch: int, setup: Setup) -> dict:
    """One run in a fresh process, which decodes the raw files as every job of a sweep does."""
    out = {"n_train_images": n_train, "n_layers": n_layers, "batch_size": batch}
    with tempfile.TemporaryDirectory() as tmp:
        write_fake_emnist(Path(tmp), n_train, N_TEST)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            out["run"] = pool.apply(memory_child, (tmp, n_layers, batch, 20, setup))
            pool.close()  # let the worker exit by itself: terminated, it leaks a semaphore warning
            pool.join()
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=200_000)
    p.add_argument("--n-test", type=int, default=N_TEST, help="test images written and AUROC-scored")
    p.add_argument("--n-layers", type=int, nargs="+", default=[2, 6])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 512])
    add_turn_arguments(p, repeats=3)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the model in every path")
    p.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    p.add_argument("--memory-n-train", type=int, default=N_BYCLASS_TRAIN, help="0 skips the memory run")
    p.add_argument("--out", type=Path, default=Path("bench_results"))
    args = parse_turns(p, argv)
    skip_unloadable_nvml_check()  # in every path alike; see src.runtime.process
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    setup = Setup(device, args.compile, args.precision)
    args.warmup += 20 if setup.compile else 0  # compilation happens in the first steps

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fake_emnist(root, args.n_train, args.n_test)
        x_train = OneClassDataModule("emnist", root=str(root), anomaly_class=0)
        x_train.setup("fit")
        x_train = x_train.data_train.x
        rows = [
            measure_row(root, x_train, n_layers, batch, args, setup)
            for n_layers in args.n_layers
            for batch in args.batch_sizes
        ]
        del x_train
    result = {
        "date": datetime.now().isoformat(timespec="seconds"),
        **asdict(setup),
        "device_name": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "lightning": L.__version__,
        "torch_threads": torch.get_num_threads(),
        "n_train_images": args.n_train,
        "n_test_scores": args.n_test,
        "timed_steps": args.steps,
        "block": args.block,
        "settle": args.settle,
        "warmup": args.warmup,
        "test_auroc_s": statistics.median(auroc_time(args.n_test, device) for _ in range(args.repeats)),
        "rows": rows,
    }
    if args.memory_n_train:
        result["memory"] = measure_memory(
            args.memory_n_train, max(args.n_layers), max(args.batch_sizes), setup
        )
    print_table(result)
    save_result(result, args.out, "train_speed")
    return result


def save_result(result: dict, out_dir: Path, name: str) -> Path:
    """Write a benchmark's result to ``out_dir/<name>-<time>.json``, so that runs can be compared."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwritten: {path}")
    return path


def print_table(r: dict) -> None:
    print(f"\n{r['n_train_images']:,} training images, {r['device_name']}, {r['torch_threads']} CPU threads, "
          f"compile={r['compile']}, precision={r['precision']}, {r['date']}; each path {r['timed_steps']} "
          f"timed steps a run, in turns of {r['settle']} untimed + {r['block']} timed")  # fmt: skip
    print("| n_layers | batch | reference samples/s | framework samples/s | naive samples/s "
          "| framework / reference (range) | framework / naive | reference / naive |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in r["rows"]:
        lo, hi = row["framework_over_reference_range"]
        print(f"| {row['n_layers']} | {row['batch_size']} | {row['reference_sps']:,.0f} "
              f"| {row['framework_sps']:,.0f} | {row['naive_sps']:,.0f} "
              f"| {row['framework_over_reference']:.2f} ({lo:.2f}-{hi:.2f}) "
              f"| {row['framework_over_naive']:.1f}x "
              f"| {row['reference_over_naive']:.1f}x |")  # fmt: skip
    print(f"\ntest AUROC over {r['n_test_scores']:,} scores: {r['test_auroc_s'] * 1000:.0f} ms")
    if m := r.get("memory"):
        gpu = "peak_gpu_mib" in m["run"]
        print(
            f"\n{m['n_train_images']:,} training images, n_layers={m['n_layers']}, batch {m['batch_size']}:"
        )
        print("| DataModule set-up (s) | peak RSS (MiB) |" + (" peak GPU memory (MiB) |" if gpu else ""))
        print("|---|---|" + ("---|" if gpu else ""))
        row = m["run"]
        extra = f" {row['peak_gpu_mib']:,.0f} |" if gpu else ""
        print(f"| {row['datamodule_setup_s']:.2f} | {row['peak_rss_mib']:,.0f} |{extra}")


if __name__ == "__main__":
    main()
