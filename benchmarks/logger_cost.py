"""What each logger costs a training step: whole ``python -m src.train`` runs, one logger at a time.

The interleaved bench (``benchmarks.train_speed``) cannot measure W&B fairly: W&B's service process
keeps working through queued steps during the other paths' turns and slows them too. So this runs
whole training runs, the loggers taking turns round after round, on a fake EMNIST-sized data set in
torchvision's raw format. A callback times the steps after a warm-up; the table shows each logger's
median time a step over the rounds and its ratio to the first logger's. W&B runs offline. Results go to
``bench_results/logger_cost-<time>.json``.

    python -m benchmarks.logger_cost --rounds 3 --loggers csv wandb none
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from lightning.pytorch import Callback

from benchmarks.train_speed import save_result, write_fake_emnist

REPO = Path(__file__).resolve().parents[1]


class StepTimer(Callback):
    """Appends the mean wall time of training steps ``start`` to ``stop`` (ms) to a JSON-lines file."""

    def __init__(self, out: str, tag: str, start: int, stop: int) -> None:
        self.out, self.tag, self.start, self.stop = Path(out), tag, start, stop
        self.t0 = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.global_step == self.start:
            self.t0 = time.perf_counter()
        elif trainer.global_step == self.stop:
            ms = (time.perf_counter() - self.t0) / (self.stop - self.start) * 1e3
            with self.out.open("a") as f:
                f.write(json.dumps({"logger": self.tag, "ms_per_step": ms}) + "\n")


def run_once(data: Path, logger: str, args: argparse.Namespace, times: Path, run_dir: Path) -> None:
    """One training run with ``logger``, its steps timed by ``StepTimer``."""
    stop = args.warmup + args.steps
    overrides = [
        f"data.root={data}", f"model={args.model}", f"model.n_layers={args.n_layers}",
        f"data.batch_size={args.batch_size}", f"logger={logger}", "trainer.max_epochs=1",
        f"+trainer.limit_train_batches={stop + 1}", "+trainer.limit_val_batches=2",
        "+trainer.limit_test_batches=2", "+trainer.num_sanity_val_steps=0",
        "+callbacks.step_timer._target_=benchmarks.logger_cost.StepTimer",
        f"+callbacks.step_timer.out={times}", f"+callbacks.step_timer.tag={logger}",
        f"+callbacks.step_timer.start={args.warmup}", f"+callbacks.step_timer.stop={stop}",
        f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = os.environ | {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "src.train", *overrides], cwd=REPO, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"logger={logger} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--loggers", nargs="+", default=["csv", "wandb"], help="conf/logger choices; first = baseline"
    )
    p.add_argument("--rounds", type=int, default=3, help="runs of each logger, taking turns")
    p.add_argument("--steps", type=int, default=1000, help="timed steps of each run")
    p.add_argument("--warmup", type=int, default=100, help="steps before the timing starts")
    p.add_argument("--n-train", type=int, default=200_000)
    p.add_argument("--model", default="rae")
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--out", type=Path, default=Path("bench_results"))
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_fake_emnist(tmp / "data", args.n_train, 2_000)
        times = tmp / "times.jsonl"
        for r in range(args.rounds):
            for logger in args.loggers:
                run_once(tmp / "data", logger, args, times, tmp / "runs" / f"{logger}-{r}")
        measured = [json.loads(line) for line in times.read_text().splitlines()]
    per_logger = {lg: [m["ms_per_step"] for m in measured if m["logger"] == lg] for lg in args.loggers}
    base = statistics.median(per_logger[args.loggers[0]])
    rows = [
        {"logger": lg, "ms_per_step": statistics.median(ms), "runs": ms,
         "over_baseline": statistics.median(ms) / base}
        for lg, ms in per_logger.items()
    ]  # fmt: skip
    result = {"config": vars(args) | {"out": str(args.out)}, "time": datetime.now().isoformat(), "rows": rows}
    print_table(result)
    save_result(result, args.out, "logger_cost")
    return result


def print_table(result: dict) -> None:
    c = result["config"]
    print(f"{c['model']}, n_layers={c['n_layers']}, batch {c['batch_size']}, {c['steps']} timed steps, "
          f"{c['rounds']} rounds, {result['time'][:19]}")  # fmt: skip
    print(f"| logger | ms per step (median) | runs | vs {c['loggers'][0]} |\n|---|---|---|---|")
    for row in result["rows"]:
        runs = ", ".join(f"{ms:.2f}" for ms in row["runs"])
        print(f"| {row['logger']} | {row['ms_per_step']:.2f} | {runs} | {row['over_baseline']:.2f}x |")


if __name__ == "__main__":
    main()
