"""How much slower the first steps of a turn are in ``benchmarks.train_speed``, for the framework and the
reference: why each turn there starts with ``--settle`` untimed steps.

``python -m benchmarks.turn_positions [--n-layers 2] [--batch-size 128] [--turns 60] [--block 10]``

On CPU, the framework and the reference take turns of ``--block`` steps with no untimed steps, as the
bench did before ``--settle``, and every step is timed on its own. Prints the median step time at each
position in a turn and, per path, how much the first three positions take over the median of the rest;
writes them to ``bench_results/turn_positions-<time>.json``.
"""

import argparse
import statistics
import tempfile
import time
from datetime import datetime
from itertools import pairwise
from pathlib import Path

from benchmarks.train_speed import (
    ReferenceLoop,
    Setup,
    _Interleave,
    framework,
    save_result,
    train_step,
    write_fake_emnist,
)
from src.cuda_check import skip_unloadable_nvml_check
from src.data.datamodule import OneClassDataModule

FIRST = 3  # positions reported as a turn's first steps


class _SteppedReference(ReferenceLoop):
    """The reference loop, timing each step: ``turns`` holds each call's step times."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.turns: list[list[float]] = []

    def run(self, steps: int) -> float:
        times = []
        for _ in range(steps):
            self.setup.sync()
            t0 = time.perf_counter()
            train_step(self.model, self.opt, self.next_batch(), self.setup)
            self.setup.sync()
            times.append(time.perf_counter() - t0)
        self.turns.append(times)
        return sum(times)


class _SteppedInterleave(_Interleave):
    """``_Interleave``, also noting when each framework step starts and when the interleaving work before
    it is over: a step's time runs from its own end of that work to the next step's start."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.marks: list[tuple[int, float, float]] = []  # (steps done, entered, left)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        entered = time.perf_counter()
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.marks.append((trainer.global_step - self.warmup, entered, time.perf_counter()))

    def step_times(self) -> dict[int, list[float]]:
        """Each timed framework step's time, by its position in its turn."""
        out: dict[int, list[float]] = {}
        for (done, _, left), (_, entered, _) in pairwise(self.marks):
            if 0 <= done < self.steps:
                out.setdefault(done % self.block, []).append(entered - left)
        return out


def summarise(by_position: dict[int, list[float]], block: int) -> dict:
    """Median ms per position, and what the first ``FIRST`` positions take over the median of the rest."""
    medians = [statistics.median(by_position[p]) * 1000 for p in range(block)]
    settled = statistics.median(medians[FIRST:])
    return {
        "median_ms": medians,
        "settled_ms": settled,
        "first_steps_extra_ms": sum(m - settled for m in medians[:FIRST]),
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-train", type=int, default=200_000)
    p.add_argument("--n-layers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--turns", type=int, default=60)
    p.add_argument("--block", type=int, default=10, help="steps a turn")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", type=Path, default=Path("bench_results"))
    args = p.parse_args(argv)
    if args.block <= FIRST:
        p.error(f"--block={args.block} must be more than {FIRST}: the rest of a turn is the settled time")
    if args.turns < 1:
        p.error(f"--turns={args.turns} must be at least 1")
    skip_unloadable_nvml_check()
    setup = Setup("cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_fake_emnist(root, args.n_train, 1000)
        dm = OneClassDataModule("emnist", root=str(root), anomaly_class=0)
        dm.setup("fit")
        reference = _SteppedReference(dm.data_train.x, args.n_layers, args.batch_size, setup)
        del dm
        interleave = _SteppedInterleave([reference], args.turns * args.block, args.block, args.warmup, setup)
        framework(root, args.n_layers, args.batch_size, interleave)
    ref_turns = reference.turns[1:]  # the first call is the untimed warm-up
    result = {
        "date": datetime.now().isoformat(timespec="seconds"),
        **{k: v for k, v in vars(args).items() if k != "out"},
        "framework": summarise(interleave.step_times(), args.block),
        "reference": summarise({i: [t[i] for t in ref_turns] for i in range(args.block)}, args.block),
    }
    print(f"\nms per step by position in a turn of {args.block} (medians over {args.turns} turns), "
          f"n_layers={args.n_layers}, batch {args.batch_size}:")  # fmt: skip
    print("| path | " + " | ".join(str(i) for i in range(args.block)) + f" | first {FIRST}, over the rest |")
    print("|---|" + "---|" * (args.block + 1))
    for path in ("framework", "reference"):
        r = result[path]
        cells = " | ".join(f"{m:.2f}" for m in r["median_ms"])
        print(f"| {path} | {cells} | {r['first_steps_extra_ms']:.2f} |")
    save_result(result, args.out, "turn_positions")
    return result


if __name__ == "__main__":
    main()
