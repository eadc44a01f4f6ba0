"""The study's figures from a sweep's ``results.csv`` rows and its jobs' CSV histories, and the score
distributions ``src.eval`` draws."""

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps, rcParams
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Figures are built without pyplot, so no GUI backend is ever selected or needed.


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def setting_line(df: pd.DataFrame, per_point: list[str], error_bars: bool = True) -> str:
    """What a sweep's figure shows, for its title: the data set(s), the epochs trained and how many
    seeds make each point (grouped by ``per_point``); "1 seed" where a point has no error bar."""
    done = df[df.status == "completed"] if "status" in df else df
    parts = [", ".join(sorted(map(str, done.dataset.dropna().unique())))]
    epochs = sorted(int(e) for e in done.get("epochs", pd.Series(dtype=float)).dropna().unique())
    if epochs:
        parts.append(f"{epochs[0]} epochs" if len(epochs) == 1 else f"{epochs[0]}-{epochs[-1]} epochs")
    seeds = done.groupby(per_point).size() if len(done) else pd.Series([0])
    lo, hi = int(seeds.min()), int(seeds.max())
    if not error_bars:
        parts.append(f"{lo} seed{'s' * (hi > 1)}" if lo == hi else f"{lo}-{hi} seeds")
    elif hi == 1:
        parts.append("1 seed, no error bars")
    else:
        parts.append(f"{lo} seeds, mean ± std" if lo == hi else f"{lo}-{hi} seeds, mean ± std")
    return "; ".join(p for p in parts if p)


def versus_depth(
    df: pd.DataFrame,
    value: str,
    ylabel: str,
    title: str,
    path: Path,
    x: str = "n_layers",
    by: str | None = None,
) -> Path:
    """Mean over seeds per model and depth (or another numeric setting ``x``), with standard
    deviations as error bars; with ``by`` (a second swept setting), one curve per model and value of
    it, e.g. the degradation curves of two datasets side by side. Curves are drawn slightly apart
    along x, so that error bars at the same x do not hide each other."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    values = df[x].dropna()
    log_x = x != "n_layers" and len(values) and values.min() > 0 and values.max() >= 8 * values.min()
    keys = ["model", by] if by else ["model"]
    groups = list(df.groupby(keys))
    spacing = float(np.diff(np.sort(values.unique())).min()) if values.nunique() > 1 else 1.0
    for i, (key, group) in enumerate(groups):
        label = f"{key[0]}, {by}={key[1]}" if by else key[0]
        stats = group.groupby(x)[value].agg(["mean", "std"]).fillna({"std": 0.0})
        shift = (i - (len(groups) - 1) / 2) * 0.04
        xs = stats.index * 2**shift if log_x else stats.index + shift * spacing
        ax.errorbar(xs, stats["mean"], yerr=stats["std"], marker="o", capsize=3, label=label)
    ax.set(xlabel="n_layers (per side)" if x == "n_layers" else x, ylabel=ylabel)
    ax.set_title(f"{title}\n{setting_line(df, [*keys, x])}", fontsize=10)
    if x == "n_layers":
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    elif log_x:  # e.g. latent_dim 2, 4, ..., 64
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(values.unique()), [f"{v:g}" for v in sorted(values.unique())])
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def by_class(df: pd.DataFrame, path: Path) -> Path:
    """Test AUROC per held-out class, one bar per model."""
    table = df.pivot_table(index="anomaly_class", columns="model", values="test_auroc", aggfunc="mean")
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    table.plot.bar(ax=ax, rot=0)
    ax.set(xlabel="held-out class", ylabel="test AUROC", ylim=(0, 1))
    ax.set_title(f"AUROC per held-out class\n{setting_line(df, ['model', 'anomaly_class'])}", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def score_histogram(scores: np.ndarray, anomaly: np.ndarray, title: str, path: Path) -> Path:
    """Distributions of the anomaly scores of normal and anomalous samples, on a log axis when the
    scores are positive and span more than a factor of 10 (reconstruction errors often do)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    lo, hi = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 1.0)
    log_axis = lo > 0 and hi > 10 * lo
    bins = np.geomspace(lo, hi, 51) if log_axis else np.linspace(lo, hi if hi > lo else lo + 1, 51)
    for value, label in ((0, "normal"), (1, "anomalous")):
        part = scores[anomaly == value]
        ax.hist(part, bins=bins, alpha=0.6, density=True, label=f"{label} ({len(part)})")
    ax.set(xlabel="anomaly score (reconstruction error)", ylabel="density", title=title)
    if log_axis:
        ax.set_xscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def scores_by_class(scores: pd.DataFrame, by_class: pd.DataFrame, title: str, path: Path) -> Path:
    """Each class's scores as a box, in ``by_class``'s order (anomaly classes, in red, then the normal
    ones hardest first), labelled with the AUROC of the anomalies against each normal class (of each
    anomaly class against the normals)."""
    fig = Figure(figsize=(max(6.0, 0.28 * len(by_class) + 2), 4.5))
    ax = fig.add_subplot()
    parts = [scores.score[scores["class"] == label].to_numpy() for label in by_class["class"]]
    boxes = ax.boxplot(parts, patch_artist=True, showfliers=False, widths=0.6)
    for box, is_anomaly in zip(boxes["boxes"], by_class.anomaly, strict=True):
        box.set(facecolor="tab:red" if is_anomaly else "tab:blue", alpha=0.6)
    ax.set_xticks(range(1, len(by_class) + 1), [f"{n} ({a:.2f})" for n, a in zip(
        by_class.class_name, by_class.auroc, strict=True)], rotation=90, fontsize=7)  # fmt: skip
    lo = float(scores.score.min()) if len(scores) else 0.0
    if lo > 0 and float(scores.score.max()) > 10 * lo:
        ax.set_yscale("log")
    # two short lines: one long one is cut at both ends when there are few classes
    xlabel = "class (AUROC against the anomalies)\nred: anomaly classes; blue: normal ones, hardest first"
    ax.set(xlabel=xlabel, ylabel="anomaly score", title=title)
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def history(job_dir: Path) -> pd.DataFrame | None:
    """Per-step ``train/g_norm`` and ``train/loss`` (and ``epoch``) from the job's CSV logger, if it had
    one."""
    path = job_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return None
    steps = pd.read_csv(path)
    if "train/g_norm" not in steps:
        return None
    columns = ["step", "train/g_norm", "train/loss"] + (["epoch"] if "epoch" in steps else [])
    return steps.dropna(subset=["train/g_norm"])[columns]


def g_norm_over_steps(sweep_dir: Path, df: pd.DataFrame, path: Path) -> Path | None:
    """``train/g_norm`` (log scale) and ``train/loss`` over steps, coloured by clipping setting."""
    fig = Figure(figsize=(11, 4))
    ax_g, ax_l = fig.subplots(1, 2)
    settings = sorted(df.gradient_clip_val.unique())
    colors = dict(zip(settings, rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    drawn = set()
    for row in df.itertuples():
        steps = history(sweep_dir / row.job)
        if steps is None:
            continue
        clip = row.gradient_clip_val
        label = None if clip in drawn else f"gradient_clip_val={clip}"
        drawn.add(clip)
        ax_g.plot(steps["step"], steps["train/g_norm"], color=colors[clip], alpha=0.6, lw=0.8, label=label)
        ax_l.plot(steps["step"], steps["train/loss"], color=colors[clip], alpha=0.6, lw=0.8, label=label)
    if not drawn:
        return None
    ax_g.set(yscale="log", xlabel="step", ylabel="train/g_norm (before clipping)", title="Gradient norm")
    ax_l.set(yscale="log", xlabel="step", ylabel="train/loss", title="Training loss")
    for ax in (ax_g, ax_l):
        ax.legend()
        ax.grid(alpha=0.3)
    return _save(fig, path)


def steps_by_depth(sweep_dir: Path, df: pd.DataFrame, path: Path) -> Path | None:
    """Per-step ``train/g_norm`` and ``train/loss`` (log scales) of a depth sweep: one row per model,
    one colour per depth (every seed drawn), from the jobs' CSV histories."""
    models = sorted(df.model.unique())
    depths = sorted(df.n_layers.unique())
    colors = dict(zip(depths, colormaps["viridis"](np.linspace(0, 0.9, len(depths))), strict=True))
    fig = Figure(figsize=(11, 3.2 * len(models)))
    axes = fig.subplots(len(models), 2, squeeze=False)
    drawn = False
    for row_axes, model in zip(axes, models, strict=True):
        labelled = set()
        for job in df[df.model == model].sort_values("n_layers").itertuples():
            steps = history(sweep_dir / job.job)
            if steps is None:
                continue
            label = None if job.n_layers in labelled else f"n_layers={job.n_layers}"
            labelled.add(job.n_layers)
            for ax, key in zip(row_axes, ("train/g_norm", "train/loss"), strict=True):
                ax.plot(steps["step"], steps[key], color=colors[job.n_layers], alpha=0.6, lw=0.8, label=label)
            drawn = True
        for ax, what in zip(row_axes, ("train/g_norm (before clipping)", "train/loss"), strict=True):
            ax.set(yscale="log", xlabel="step", ylabel=what, title=f"{model}: {what}")
            ax.grid(alpha=0.3)
        if labelled:
            row_axes[1].legend(fontsize=7, ncol=2)
    if not drawn:
        return None
    fig.suptitle(
        f"Per-step curves by depth ({setting_line(df, ['model', 'n_layers'], error_bars=False)})", fontsize=10
    )
    return _save(fig, path)


def make_all(sweep_dir: Path, df: pd.DataFrame, axes: list[str] | None = None) -> list[Path]:
    """Every plot the sweep's settings allow; returns the files written. ``axes`` are the swept
    settings (besides model and seed): a curve over one of them is drawn when it is the only one, or
    for depth, with one curve per value of a second one, so that no point averages over another
    setting."""
    done = df[df.status == "completed"]
    out: list[Path | None] = []
    if done.empty:
        return []
    only = lambda column: not axes or axes == [column]  # noqa: E731
    study_axes = ("n_layers", "anomaly_class", "gradient_clip_val")  # their own plots, below
    generic = axes[0] if axes and len(axes) == 1 and axes[0] not in study_axes else None
    if generic and pd.api.types.is_numeric_dtype(done[generic]):
        name = generic.replace(".", "_").replace("=", "_")
        out.append(versus_depth(done, "test_auroc", "test AUROC", f"AUROC vs {generic}",
                                sweep_dir / f"auroc_vs_{name}.png", x=generic))  # fmt: skip
    # depth and one more swept setting (data=digits,npz, model.beta=...): one curve per value of it
    by = next((a for a in axes or [] if a != "n_layers"), None) if axes and len(axes) == 2 else None
    if done.n_layers.nunique() > 1 and (only("n_layers") or (by and "n_layers" in axes)):
        out.append(versus_depth(done, "test_auroc", "test AUROC", "AUROC vs depth",
                                sweep_dir / "auroc_vs_depth.png", by=by))  # fmt: skip
        plain = done[done.model.isin(["ae", "rae"])]
        if not plain.empty:
            title = "Degradation: train loss vs depth"
            out.append(versus_depth(plain, "train_loss", "final train loss", title,
                                    sweep_dir / "train_loss_vs_depth.png", by=by))  # fmt: skip
        if not by:
            out.append(steps_by_depth(sweep_dir, done, sweep_dir / "steps_by_depth.png"))
    if done.anomaly_class.nunique() > 1 and only("anomaly_class"):
        out.append(by_class(done, sweep_dir / "auroc_by_class.png"))
    if df.gradient_clip_val.nunique() > 1:
        out.append(g_norm_over_steps(sweep_dir, df, sweep_dir / "g_norm_over_steps.png"))
    return [p for p in out if p is not None]
