"""Runs that share a machine: the same training job alone, two at once and four at once, with the
project's default threads and with torch's own (the default before: every core), and two jobs through
Hydra's joblib and submitit_local launchers with each.

``python -m benchmarks.concurrency [--epochs 30] [--counts 1 2 4] [--timeout 300] [--settings ...]``

The job is ``make train``'s size: ``data=digits model=rae model.n_layers=4``, ``--epochs`` epochs, CSV
logger, no progress bar. Each case reports its wall time and the ratio to the ideal, jobs x alone /
cores, at least alone (1.0: the cores are shared without loss). A case that runs past ``--timeout``
seconds is stopped and reported as such. Results go to ``bench_results/concurrency-<time>.json``.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.train_speed import save_result

REPO = Path(__file__).resolve().parents[1]
JOB = ["data=digits", "model=rae", "model.n_layers=4", "logger=csv", "trainer.enable_progress_bar=false"]
CORES = len(os.sched_getaffinity(0))
# name: (environment, overrides); "default" is what a plain ``python -m src.train`` gets
SETTINGS = {
    "default": ({}, []),
    f"threads={CORES} (torch's)": ({}, [f"threads={CORES}"]),
    "OMP_WAIT_POLICY=PASSIVE": ({"OMP_WAIT_POLICY": "PASSIVE"}, [f"threads={CORES}"]),
}
# a user's own choices would decide the outcome: the benchmark runs without them
USER_SETTINGS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def environment(setting: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    return env | SETTINGS[setting][0] | {"WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}


def run_together(commands: list[list[str]], env: dict[str, str], timeout: float) -> float | None:
    """Start ``commands`` at once; the wall time until the last ends, or None past ``timeout``."""
    start = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for c in commands]  # fmt: skip
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=max(1.0, timeout - (time.perf_counter() - start)))
            if proc.returncode != 0:
                raise RuntimeError(f"a job failed ({proc.returncode}): {err.decode()[-2000:]}")
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.wait()
        return None
    return time.perf_counter() - start


def train_command(out: Path, epochs: int, *extra: str, multirun: bool = False) -> list[str]:
    flags = ["--multirun"] if multirun else []
    return [sys.executable, "-m", "src.train", *flags, *JOB, f"trainer.max_epochs={epochs}", *extra,
            f"hydra.run.dir={out}", f"hydra.sweep.dir={out}"]  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4], help="jobs started at once")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a case is stopped")
    p.add_argument("--launchers", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS)[:2])
    p.add_argument("--out", type=Path, default=Path("bench_results"))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for setting in args.settings:
            overrides = SETTINGS[setting][1]
            env, alone = environment(setting), None
            for count in args.counts:
                out = Path(tmp) / str(len(rows))
                commands = [train_command(out / str(i), args.epochs, *overrides) for i in range(count)]
                seconds = run_together(commands, env, args.timeout)
                alone = seconds if count == 1 else alone
                rows.append(_row(setting, f"{count} at once", count, seconds, alone, CORES))
            if not args.launchers:
                continue
            for launcher in ("joblib", "submitit_local"):
                extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
                sweep = train_command(Path(tmp) / f"{launcher}{len(rows)}", args.epochs, "seed=0,1",
                                      f"hydra/launcher={launcher}", *extra, *overrides,
                                      multirun=True)  # fmt: skip
                seconds = run_together([sweep], env, args.timeout)
                rows.append(_row(setting, f"2 jobs, hydra/launcher={launcher}", 2, seconds, alone, CORES))
    result = {"cores": CORES, "epochs": args.epochs, "job": JOB, "timeout_s": args.timeout, "rows": rows}
    print_table(result)
    save_result(result, args.out, "concurrency")
    return result


def _row(setting: str, case: str, jobs: int, seconds: float | None, alone: float | None, cores: int) -> dict:
    ideal = None if alone is None else alone * max(1.0, jobs / cores)
    ratio = None if seconds is None or ideal is None else seconds / ideal
    return {"setting": setting, "case": case, "jobs": jobs, "wall_s": seconds, "over_ideal": ratio}


def print_table(result: dict) -> None:
    cores, epochs = result["cores"], result["epochs"]
    print(f"\n{cores} cores, {epochs} epochs a job; ideal = jobs x alone / cores, at least alone")
    print("| setting | case | wall time (s) | / ideal |")
    print("|---|---|---|---|")
    for r in result["rows"]:
        wall = f"> {result['timeout_s']:.0f} (stopped)" if r["wall_s"] is None else f"{r['wall_s']:.1f}"
        ratio = "–" if r["over_ideal"] is None else f"{r['over_ideal']:.2f}"
        print(f"| {r['setting']} | {r['case']} | {wall} | {ratio} |")


if __name__ == "__main__":
    main()
