"""Aggregate a multirun directory into the study's tables and plots (``python -m src.report``).

Reads every job's ``metrics.json`` (and its ``csv/metrics.csv`` history for curves, ``src.analysis.runs``)
and writes ``results.csv``, ``report.md`` and PNG plots into that directory. It works on partial or
still-running sweeps and says what is missing. Residual models are paired with their plain twins seed by
seed (``src.analysis.stats``). ``--against`` adds how far its cells are from another sweep of the same
settings.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

from src.analysis import pathway, plots, stats
from src.analysis.markdown import key_text, markdown
from src.analysis.runs import NoResultsError, collect, table_rows, varies, wandb_project
from src.runtime.wandb_access import log_to_wandb, sweep_group

# The study's RVAE/VAE table (MNIST, each digit 0..9 held out in turn), by our model names.
PUBLISHED_MNIST = {
    "rvae": [0.990, 0.408, 0.990, 0.969, 0.944, 0.968, 0.962, 0.909, 0.974, 0.848],
    "rvae_original": [0.987, 0.396, 0.991, 0.970, 0.935, 0.969, 0.943, 0.910, 0.972, 0.833],
    "vae": [0.980, 0.380, 0.990, 0.967, 0.929, 0.960, 0.956, 0.900, 0.973, 0.810],
}
PAIRED_FILE = "paired.csv"  # stats.paired_table
# what ``--against`` compares: label, results.csv column, number format
COMPARED = (
    ("test AUROC", "test_auroc", ".3f"),
    ("best validation AUROC", "val_auroc", ".3f"),
    ("final train loss", "train_loss", ".3f"),
    ("max train/g_norm", "g_norm_max", ".4g"),
    ("max train/g_norm from the second epoch on", "g_norm_max_late", ".4g"),
    ("median train/g_norm from the second epoch on", "g_norm_median_late", ".4g"),
)


class NotComparableError(NoResultsError):
    """``--against`` names a sweep that varies other settings."""


def _cell(values: pd.Series, n_diverged: int = 0) -> str:
    values = values.dropna()
    if values.empty:
        text = "–"
    elif len(values) == 1:
        text = f"{values.iloc[0]:.3f} (1)"
    else:
        text = f"{values.mean():.3f} ± {values.std():.3f} ({len(values)})"
    if n_diverged:
        text = f"{text}, {n_diverged} diverged" if not values.empty else f"diverged ({n_diverged})"
    return text


def pivot_table(df: pd.DataFrame, row: str | list[str], value: str, higher_is_better: bool = True) -> str:
    """Markdown table: ``row`` (a setting, or several) down, models across, ``mean ± std (n jobs)`` per
    cell, best in bold. Statistics use completed jobs; diverged jobs are counted in their cell."""
    rows = [row] if isinstance(row, str) else list(row)
    df = df[df.status.isin(["completed", "diverged"])]
    models = sorted(df.model.unique())
    lines = []
    for keys, group in df.groupby(rows, sort=True, dropna=False):
        done = group[group.status == "completed"]
        means = {m: done[done.model == m][value].mean() for m in models}
        valid = {m: v for m, v in means.items() if pd.notna(v)}
        best = (max if higher_is_better else min)(valid.values()) if len(valid) > 1 else None
        cells = []
        for m in models:
            n_div = int(((group.model == m) & (group.status == "diverged")).sum())
            cell = _cell(done[done.model == m][value], n_div)
            cells.append(f"**{cell}**" if best is not None and valid.get(m) == best else cell)
        lines.append([key_text(keys), *cells])
    if rows == ["anomaly_class"]:  # the study's summary: the mean over held-out classes
        per_class = df[df.status == "completed"].groupby(["model", "anomaly_class"])[value].mean()
        lines.append(["mean over classes", *(_cell(per_class[m]) if m in per_class else "–" for m in models)])
    return markdown(lines, [", ".join(rows), *models])


def published_table(df: pd.DataFrame) -> str:
    """Our test AUROC per held-out digit beside the study's published MNIST figures."""
    done = df[(df.status == "completed") & df.model.isin(list(PUBLISHED_MNIST))]
    models = [m for m in PUBLISHED_MNIST if m in set(done.model)]
    lines = []
    for digit in range(10):
        cells = []
        for m in models:
            ours = done[(done.model == m) & (done.anomaly_class == str(digit))].test_auroc
            cells += [_cell(ours), f"{PUBLISHED_MNIST[m][digit]:.3f}"]
        lines.append([str(digit), *cells])
    means = []
    for m in models:
        ours = done[done.model == m].groupby("anomaly_class").test_auroc.mean()
        means += [_cell(ours), f"{sum(PUBLISHED_MNIST[m]) / 10:.3f}"]
    lines.append(["mean", *means])
    return markdown(lines, ["digit", *(f"{m} ({who})" for m in models for who in ("ours", "study"))])


def cell_means(df: pd.DataFrame, row: list[str], value: str) -> pd.Series:
    """``value``'s mean over the completed jobs of each cell, indexed by the row settings and the model."""
    done = df[df.status == "completed"]
    return done.groupby([*row, "model"], dropna=False)[value].mean().dropna()


def comparison(df: pd.DataFrame, row: list[str], other: pd.DataFrame, other_row: list[str], name: str) -> str:
    """How far each cell of this sweep is from the same cell of another sweep of the same settings (another
    machine, thread count or commit): per quantity, the median and the largest difference."""
    if other_row != row:
        raise NotComparableError(
            f"--against {name}: that sweep varies {other_row}, this one {row}; compare two sweeps that vary "
            "the same settings (the same experiment, or the same --multirun overrides)."
        )
    lines = []
    for label, value, fmt in COMPARED:
        if value not in df or value not in other:
            continue  # g_norm from the second epoch on: only where a job has a CSV history
        here, there = cell_means(df, row, value), cell_means(other, row, value)
        both = here.index.intersection(there.index)
        if both.empty:
            continue
        diff = here[both] - there[both]
        at = diff.abs().idxmax()
        cell = ", ".join(f"{k}={v}" for k, v in zip([*row, "model"], at, strict=True))
        largest = f"{diff[at]:+{fmt}} ({cell}: {here[at]:{fmt}} / {there[at]:{fmt}})"
        if (diff == 0).all():
            largest = "none: every cell the same to the last digit"
        lines.append([label, str(len(both)), f"{diff.abs().median():{fmt}}", largest])
    if not lines:
        lines.append(["(no cell has completed jobs in both sweeps)", "0", "–", "–"])
    cells_here, cells_there = (set(cell_means(d, row, "test_auroc").index) for d in (df, other))
    only = [len(cells_here - cells_there), len(cells_there - cells_here)]
    unmatched = [f"{only[0]} only here", f"{only[1]} only there"] if any(only) else []
    notes = [f"Cells with a test AUROC in one sweep only: {', '.join(unmatched)}."] if unmatched else []
    header = ["quantity", "cells in both", "median difference", "largest difference"]
    return "\n\n".join([
        f"## Against `{name}`",
        "Each cell here (mean over seeds, completed jobs) minus the same cell there; the largest difference "
        "with both values (here / there).",
        markdown(lines, header),
        *notes,
    ])  # fmt: skip


def render(
    sweep_dir: Path,
    df: pd.DataFrame,
    missing: list[str],
    images: list[str],
    axes: list[str],
    against: str | None = None,
    pairs: pd.DataFrame | None = None,
) -> str:
    counts = df.status.value_counts().to_dict()
    total = len(df) + len(missing)
    parts = [
        f"# Sweep report: `{sweep_dir}`",
        f"{total} jobs expected, {len(df)} started: "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        + f"; {len(missing)} missing. Cells: mean ± std over seeds (number of jobs); best per row in bold.",
    ]
    row = table_rows(df, axes)
    if df.status.isin(["completed", "diverged"]).any():
        label = ", ".join(row)
        parts += [f"## Test AUROC per {label}", pivot_table(df, row, "test_auroc")]
        parts += [f"## Best validation AUROC per {label}", pivot_table(df, row, "val_auroc")]
        plain = df[df.model.isin(["ae", "rae"])]
        if not plain.empty:
            parts += [
                f"## Final train loss per {label} (AE vs RAE; lower is better)",
                pivot_table(plain, row, "train_loss", higher_is_better=False),
            ]
        if varies(df, "gradient_clip_val"):
            parts += [
                "## Max train/g_norm per gradient_clip_val",
                pivot_table(df, "gradient_clip_val", "g_norm_max", False),
            ]
            if "g_norm_max_late" in df and df.g_norm_max_late.notna().any():
                parts += [
                    "## Max train/g_norm from the second epoch on, per gradient_clip_val "
                    "(the overall max is nearly always the first step)",
                    pivot_table(df, "gradient_clip_val", "g_norm_max_late", False),
                    "## Median train/g_norm from the second epoch on, per gradient_clip_val",
                    pivot_table(df, "gradient_clip_val", "g_norm_median_late", False),
                ]
        if row == ["anomaly_class"] and set(df.dataset) == {"mnist"}:
            parts += ["## Test AUROC per held-out MNIST digit, beside the study", published_table(df)]
        elif row == ["anomaly_class"] and set(df.dataset) == {"mnist_5k"}:
            parts += [
                "## Test AUROC per held-out digit on MNIST-5k, beside the study's figures on all of MNIST",
                published_table(df),
            ]
        if pairs is not None:
            parts += stats.section(pairs, row)
        parts += pathway.section(df, row)
    else:
        parts.append("No job has completed yet.")
    if against:
        parts.append(against)
    bad = df[df.status != "completed"]
    if len(bad) or missing:
        parts.append("## Jobs without results")
        parts += [
            f"- `{r.job}`: {r.status}" + (f" ({r.error})" if isinstance(r.error, str) else "")
            for r in bad.itertuples()
        ]
        parts += [f"- `{m}`: missing (never started)" for m in missing]
    parts += [f"![{name}]({name})" for name in images]
    return "\n\n".join(parts) + "\n"


def build_report(
    sweep_dir: str | Path, against: str | Path | None = None
) -> tuple[pd.DataFrame, list[str], list[Path]]:
    """Write ``results.csv``, ``report.md`` and plots into ``sweep_dir``; return what was written. With
    ``against``, another sweep of the same settings, ``report.md`` also says how far apart their cells are
    (``comparison``); nothing is written into that sweep."""
    sweep_dir = _sweep_dir(sweep_dir)
    df, missing, axes = collect(sweep_dir)
    section = None
    if against is not None:
        other, _, other_axes = collect(_sweep_dir(against))
        section = comparison(df, table_rows(df, axes), other, table_rows(other, other_axes), str(against))
    df.to_csv(sweep_dir / "results.csv", index=False)
    pairs = stats.paired_table(df, table_rows(df, axes))
    if pairs.empty:  # no pair of models (any longer): no stale table
        (sweep_dir / PAIRED_FILE).unlink(missing_ok=True)
    else:
        pairs.to_csv(sweep_dir / PAIRED_FILE, index=False)
    images = plots.make_all(sweep_dir, df, axes)
    report = render(sweep_dir, df, missing, [p.name for p in images], axes, section, pairs)
    (sweep_dir / "report.md").write_text(report)
    return df, missing, images


def _sweep_dir(path: str | Path) -> Path:
    path = Path(path).resolve()
    if not path.is_dir():
        raise NoResultsError(f"{path} is not a directory")
    return path


def upload(sweep_dir: Path, df: pd.DataFrame, images: list[Path]) -> None:
    """A summary run in the sweep's W&B group: the results table, the paired table, the plots and, for a
    depth sweep, its curves as W&B charts."""
    group = sweep_dir.name
    if (sweep_dir / "multirun.yaml").is_file():  # the group its jobs logged to
        group = sweep_group(OmegaConf.load(sweep_dir / "multirun.yaml").task_name, sweep_dir)
    tables = {"results": df.astype(str)}
    if (sweep_dir / PAIRED_FILE).is_file():
        tables["paired"] = pd.read_csv(sweep_dir / PAIRED_FILE).astype(str)
    log_to_wandb(
        sweep_dir,
        project=wandb_project(sweep_dir),
        name=f"report-{sweep_dir.name}",
        job_type="report",
        group=group,
        tables=tables,
        images={p.stem: p for p in images},
        charts=depth_charts(df) if table_rows(df, collect(sweep_dir)[2]) == ["n_layers"] else None,
    )


def depth_charts(df: pd.DataFrame) -> dict[str, Any]:
    """The degradation panels as W&B charts: test AUROC and final train loss against ``model.n_layers``,
    one line per model, each point the mean over the seeds that completed."""
    import wandb

    done = df[df.status == "completed"]
    charts = {}
    for column, key in (("test_auroc", "test/auroc"), ("train_loss", "train/epoch_loss")):
        means = done.pivot_table(index="n_layers", columns="model", values=column, aggfunc="mean")
        lines = [means[model].dropna() for model in means.columns]
        charts[f"{column}_vs_n_layers"] = wandb.plot.line_series(
            xs=[line.index.tolist() for line in lines],
            ys=[line.tolist() for line in lines],
            keys=[str(model) for model in means.columns],
            title=f"{key} vs model.n_layers (mean over seeds)",
            xname="model.n_layers",
        )
    return charts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (logs/<task>/multiruns/<time>)")
    parser.add_argument("--wandb", action="store_true", help="also log the table and plots to W&B")
    parser.add_argument("--against", type=Path, metavar="OTHER_SWEEP_DIR",
                        help="another sweep of the same settings (another machine, thread count or commit): "
                        "how far apart their cells are")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        df, missing, images = build_report(args.sweep_dir, args.against)
    except NoResultsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.wandb:
        upload(args.sweep_dir.resolve(), df, images)
    print((args.sweep_dir / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
