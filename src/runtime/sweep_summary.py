"""The end of a multirun: one line per job and the command that makes the sweep's report."""

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.analysis.runs import NoResultsError, collect


def summary_lines(sweep_dir: Path) -> list[str]:
    """One line per job of the sweep in ``sweep_dir`` (its overrides, status and test AUROC), the jobs
    that never started, and the ``src.report`` command for the sweep."""
    try:
        df, missing, _ = collect(sweep_dir)
    except NoResultsError:
        return [f"No job of this sweep left a record in {sweep_dir}."]
    lines = [f"Sweep {sweep_dir}: {len(df)} jobs"]
    for job in df.itertuples():
        auroc = "" if job.test_auroc != job.test_auroc else f"  test/auroc {job.test_auroc:.4f}"  # NaN
        lines.append(f"  {job.job}  {job.status}{auroc}")
    lines += [f"  {overrides}  missing (never started)" for overrides in missing]
    lines.append(f"Tables and plots: python -m src.report {sweep_dir}")
    return lines


class SweepSummary(Callback):
    """A Hydra callback: when a multirun ends, print ``summary_lines`` of its sweep directory (read from
    the jobs' ``metrics.json``, so it works whatever launcher ran them)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print("\n".join(summary_lines(Path(config.hydra.sweep.dir))), flush=True)
