"""Aggregate a multirun directory into the study's tables and plots.

``python -m src.report logs/degradation/multiruns/<time> [--wandb] [--against <other sweep>]`` reads
every job's ``metrics.json`` (and its ``csv/metrics.csv`` history for curves) and writes ``results.csv``,
``report.md`` and PNG plots into that directory. It works on partial or still-running sweeps and says
what is missing. Residual models are paired with their plain twins seed by seed (``src.paired``).
``--against`` adds how far its cells are from another sweep of the same settings.
"""

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from omegaconf import OmegaConf

from src import paired, plots
from src.results import METRICS_FILE, read_metrics
from src.wandb_access import wandb_mode

# The study's RVAE/VAE table (MNIST, each digit 0..9 held out in turn), by our model names.
PUBLISHED_MNIST = {
    "rvae": [0.990, 0.408, 0.990, 0.969, 0.944, 0.968, 0.962, 0.909, 0.974, 0.848],
    "rvae_original": [0.987, 0.396, 0.991, 0.970, 0.935, 0.969, 0.943, 0.910, 0.972, 0.833],
    "vae": [0.980, 0.380, 0.990, 0.967, 0.929, 0.960, 0.956, 0.900, 0.973, 0.810],
}
COLUMNS = [
    "job", "status", "model", "n_layers", "block", "hidden_dim", "latent_dim", "dataset",
    "anomaly_class", "seed", "gradient_clip_val", "train_loss", "val_auroc", "test_auroc",
    "test_auprc", "g_norm_max", "test_normal", "test_anomaly", "wall_time_s", "torch_threads", "error",
]  # fmt: skip


# Swept settings the report has columns for already; any other swept setting gets a column of its own,
# named by its override key (model.latent_dim, data=..., ...).
KNOWN_AXES = {
    "model.n_layers": "n_layers",
    "data.anomaly_class": "anomaly_class",
    "trainer.gradient_clip_val": "gradient_clip_val",
    "model.latent_dim": "latent_dim",
    "model.hidden_dim": "hidden_dim",
    "model.block": "block",
}
PAIRED_FILE = "paired.csv"  # src.paired.paired_table
NOT_AXES = {"model", "seed"}  # models are the tables' columns; seeds are what a cell averages over
# what ``--against`` compares: label, results.csv column, number format
COMPARED = (
    ("test AUROC", "test_auroc", ".3f"),
    ("best validation AUROC", "val_auroc", ".3f"),
    ("final train loss", "train_loss", ".3f"),
    ("max train/g_norm", "g_norm_max", ".4g"),
    ("max train/g_norm from the second epoch on", "g_norm_max_late", ".4g"),
    ("median train/g_norm from the second epoch on", "g_norm_median_late", ".4g"),
)


class NoResultsError(RuntimeError):
    """The directory holds no job of a multirun."""


class NotComparableError(NoResultsError):
    """``--against`` names a sweep that varies other settings."""


def expected_jobs(sweep_dir: Path) -> list[frozenset[str]] | None:
    """Every job's overrides as the basic sweeper expands them from ``multirun.yaml``, or None."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    cfg = OmegaConf.load(path)
    if "BasicSweeper" not in str(OmegaConf.select(cfg, "hydra.sweeper._target_")):
        return None  # e.g. Optuna decides its jobs as it goes
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(cfg.hydra.overrides.task)
    parsed = OverridesParser.create().parse_overrides(args)
    return [frozenset(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _settings(model_name: str | None, model: dict, data: dict, seed: Any, clip: Any) -> dict[str, Any]:
    return {
        "model": model_name,
        "n_layers": model.get("n_layers"),
        "block": model.get("block"),
        "hidden_dim": model.get("hidden_dim"),
        "latent_dim": model.get("latent_dim"),
        "dataset": data.get("dataset"),
        "anomaly_class": str(data.get("anomaly_class")),
        "seed": seed,
        "gradient_clip_val": clip,
    }


def job_row(job_dir: Path, sweep_dir: Path) -> dict[str, Any]:
    """One row of ``results.csv``: the job's settings and results (from ``metrics.json``, or from its
    saved Hydra config while it has none)."""
    row: dict[str, Any] = {"job": str(job_dir.relative_to(sweep_dir))}
    if not (job_dir / METRICS_FILE).is_file():
        cfg = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "config.yaml"))
        choices = OmegaConf.load(job_dir / ".hydra" / "hydra.yaml").hydra.runtime.choices
        clip = cfg["trainer"].get("gradient_clip_val")
        return (
            row
            | {"status": "incomplete"}
            | _settings(choices.get("model"), cfg["model"], cfg["data"], cfg["seed"], clip)
        )
    m = read_metrics(job_dir)
    clip = m.get("trainer", {}).get("gradient_clip_val")
    return (
        row
        | {"status": m.get("status")}
        | _settings(m.get("model_name"), m["model"], m["data"], m.get("seed"), clip)
        | {
            "train_loss": m.get("train/loss"),
            "val_auroc": m.get("val/auroc"),
            "test_auroc": m.get("test/auroc"),
            "test_auprc": m.get("test/auprc"),
            "g_norm_max": m.get("train/g_norm_max"),
            "test_normal": (m.get("split") or {}).get("test_normal"),  # what test/auroc was computed over
            "test_anomaly": (m.get("split") or {}).get("test_anomaly"),
            "wall_time_s": m.get("wall_time_s"),
            "torch_threads": m.get("torch_threads"),  # CPU numbers depend on it
            "error": m.get("error") or m.get("reason"),
        }
    )


def late_g_norm(job_dir: Path) -> tuple[float, float]:
    """Max and median ``train/g_norm`` from the second epoch on (NaN without a CSV history). The
    run's overall max is nearly always its first step, before clipping can act: an explosion shows
    after the first epoch."""
    steps = plots.history(job_dir)
    if steps is None or "epoch" not in steps:
        return float("nan"), float("nan")
    late = steps[steps.epoch >= 1]["train/g_norm"]
    return (float(late.max()), float(late.median())) if len(late) else (float("nan"), float("nan"))


def job_overrides(job_dir: Path) -> dict[str, str]:
    """The job's command-line overrides, ``{"model.latent_dim": "8", ...}``."""
    items = OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
    return {key.lstrip("+~"): value for key, _, value in (str(i).partition("=") for i in items)}


def _axis_column(raw: list[str | None]) -> list[Any]:
    """Override values as numbers where all of them are numbers (so that 16 sorts after 2), else as
    the text given; a job without the override reads ``default``."""
    parsed = []
    for value in raw:
        try:
            parsed.append(yaml.safe_load(value) if value is not None else None)
        except yaml.YAMLError:
            parsed.append(value)
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in parsed):
        return parsed
    return ["default" if v is None else v for v in raw]


def sweep_axes(df: pd.DataFrame, overrides: list[dict[str, str]]) -> list[str]:
    """The settings the sweep varies, besides the model and the seed, as columns of ``df`` (added
    where the report has none): the rows of its tables."""
    keys = sorted({k for o in overrides for k in o} - NOT_AXES)
    swept = [k for k in keys if len({o.get(k) for o in overrides}) > 1]
    for key in swept:
        if key not in KNOWN_AXES:
            df[key] = _axis_column([o.get(key) for o in overrides])
    return [KNOWN_AXES.get(k, k) for k in swept]


def collect(sweep_dir: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    """All jobs found under ``sweep_dir``, the overrides of expected jobs that never started, and the
    swept settings (see ``sweep_axes``)."""
    job_dirs = sorted(p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml"))
    if not job_dirs:
        raise NoResultsError(
            f"{sweep_dir} holds no job of a multirun (no */.hydra/overrides.yaml): pass the sweep "
            "directory that `python -m src.train --multirun` printed, e.g. logs/<task>/multiruns/<time>."
        )
    rows = [job_row(d, sweep_dir) for d in job_dirs]
    found = {frozenset(OmegaConf.load(d / ".hydra" / "overrides.yaml")) for d in job_dirs}
    missing = [",".join(sorted(j)) for j in expected_jobs(sweep_dir) or [] if j not in found]
    df = pd.DataFrame(rows).reindex(columns=COLUMNS)
    # a label, not a number: null (no clipping) must stay a value of its own
    df["gradient_clip_val"] = df.gradient_clip_val.map(lambda v: "null" if pd.isna(v) else f"{v:g}")
    axes = sweep_axes(df, [job_overrides(d) for d in job_dirs])
    if varies(df, "gradient_clip_val"):
        late = [late_g_norm(d) for d in job_dirs]
        df["g_norm_max_late"], df["g_norm_median_late"] = [v[0] for v in late], [v[1] for v in late]
    return df, missing, axes


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
    cell, best in bold.

    Statistics use completed jobs; diverged jobs are counted in their cell.
    """
    rows = [row] if isinstance(row, str) else list(row)
    df = df[df.status.isin(["completed", "diverged"])]
    models = sorted(df.model.unique())
    lines = [f"| {', '.join(rows)} | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for keys, group in df.groupby(rows, sort=True, dropna=False):
        key = ", ".join(f"{k:.4g}" if isinstance(k, float) else str(k) for k in keys)
        done = group[group.status == "completed"]
        means = {m: done[done.model == m][value].mean() for m in models}
        valid = {m: v for m, v in means.items() if pd.notna(v)}
        best = (max if higher_is_better else min)(valid.values()) if len(valid) > 1 else None
        bold = {m for m, v in valid.items() if best is not None and v == best}
        cells = []
        for m in models:
            n_div = int(((group.model == m) & (group.status == "diverged")).sum())
            cell = _cell(done[done.model == m][value], n_div)
            cells.append(f"**{cell}**" if m in bold else cell)
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    if rows == ["anomaly_class"]:  # the study's summary: the mean over held-out classes
        per_class = df[df.status == "completed"].groupby(["model", "anomaly_class"])[value].mean()
        means = [_cell(per_class[m]) if m in per_class else "–" for m in models]
        lines.append("| mean over classes | " + " | ".join(means) + " |")
    return "\n".join(lines)


def published_table(df: pd.DataFrame) -> str:
    """Our test AUROC per held-out digit beside the study's published MNIST figures."""
    done = df[(df.status == "completed") & df.model.isin(list(PUBLISHED_MNIST))]
    models = [m for m in PUBLISHED_MNIST if m in set(done.model)]
    header = " | ".join(f"{m} (ours) | {m} (study)" for m in models)
    lines = [f"| digit | {header} |", "|---" * (2 * len(models) + 1) + "|"]
    for digit in range(10):
        cells = []
        for m in models:
            ours = done[(done.model == m) & (done.anomaly_class == str(digit))].test_auroc
            cells += [_cell(ours), f"{PUBLISHED_MNIST[m][digit]:.3f}"]
        lines.append(f"| {digit} | " + " | ".join(cells) + " |")
    means = []
    for m in models:
        means += [_cell(done[done.model == m].groupby("anomaly_class").test_auroc.mean()),
                  f"{sum(PUBLISHED_MNIST[m]) / 10:.3f}"]  # fmt: skip
    lines.append("| mean | " + " | ".join(means) + " |")
    return "\n".join(lines)


def varies(df: pd.DataFrame, column: str) -> bool:
    return df[column].map(str).nunique() > 1


def table_rows(df: pd.DataFrame, axes: list[str]) -> list[str]:
    """The settings down the tables: the swept ones; without overrides that vary, the first study setting
    that does."""
    fallback = ("n_layers", "anomaly_class", "gradient_clip_val")
    return axes or [next((c for c in fallback if varies(df, c)), "n_layers")]


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
    lines = [
        f"## Against `{name}`",
        "Each cell here (mean over seeds, completed jobs) minus the same cell there; the largest difference "
        "with both values (here / there).",
        "| quantity | cells in both | median difference | largest difference |",
        "|---|---|---|---|",
    ]
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
        lines.append(f"| {label} | {len(both)} | {diff.abs().median():{fmt}} | {largest} |")
    if len(lines) == 4:
        lines.append("| (no cell has completed jobs in both sweeps) | 0 | – | – |")
    cells_here, cells_there = (set(cell_means(d, row, "test_auroc").index) for d in (df, other))
    only = [len(cells_here - cells_there), len(cells_there - cells_here)]
    unmatched = [f"{only[0]} only here", f"{only[1]} only there"] if any(only) else []
    notes = [f"Cells with a test AUROC in one sweep only: {', '.join(unmatched)}."] if unmatched else []
    return "\n\n".join([*lines[:2], "\n".join(lines[2:]), *notes])


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
            parts += paired.section(pairs, row)
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
    pairs = paired.paired_table(df, table_rows(df, axes))
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


def wandb_project(sweep_dir: Path) -> str:
    """The W&B project the sweep's jobs logged to (``logger.wandb.project``), else the default's."""
    multirun = sweep_dir / "multirun.yaml"
    project = (
        OmegaConf.select(OmegaConf.load(multirun), "logger.wandb.project") if multirun.is_file() else None
    )
    return project or "rvae-anomaly"


def log_to_wandb(sweep_dir: Path, df: pd.DataFrame, images: list[Path]) -> None:
    """A summary run in the sweep's W&B group: the results table and the plots. Offline without
    credentials, like training; a failure is a warning (the files are written already)."""
    import wandb

    project, group = wandb_project(sweep_dir), sweep_dir.name
    if (sweep_dir / "multirun.yaml").is_file():  # the group its jobs logged to
        group = f"{OmegaConf.load(sweep_dir / 'multirun.yaml').task_name}-{sweep_dir.name}"
    try:
        with wandb.init(project=project, group=group, name=f"report-{sweep_dir.name}", job_type="report",
                        dir=str(sweep_dir), mode=wandb_mode()) as run:  # fmt: skip
            run.log({"results": wandb.Table(dataframe=df.astype(str))})
            if (sweep_dir / PAIRED_FILE).is_file():
                run.log({"paired": wandb.Table(dataframe=pd.read_csv(sweep_dir / PAIRED_FILE).astype(str))})
            run.log({p.stem: wandb.Image(str(p)) for p in images})
    except Exception as err:
        print(f"warning: W&B logging failed ({type(err).__name__}: {err}); the report is in {sweep_dir}.",
              file=sys.stderr)  # fmt: skip


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
        log_to_wandb(args.sweep_dir.resolve(), df, images)
    print((args.sweep_dir / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
