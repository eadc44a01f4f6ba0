"""The study's claims on one page, from the five sweeps ``make study`` runs.

``python -m src.claims logs/study [--data digits] [--wandb]`` reads the sweeps ``<experiment>[_<data>]``
in that directory (degradation, rvae_vs_vae, rvae_vs_vae_depth, grad_explosion, bottleneck), says for
each claim what its sweep shows, and writes it to ``claims[_<data>].md`` there. Better and worse come from the
seed-paired comparison of ``src.analysis.stats`` (a 95 % interval clear of 0); the gradient explosion and the
bottleneck are given as numbers, since the study states no threshold for them. A sweep not run (or with
no completed job) is said to be so; the others are still read. ``--wandb`` logs the claims to W&B too.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

from src.analysis import stats
from src.analysis.markdown import markdown
from src.analysis.runs import NoResultsError, collect, table_rows, wandb_project
from src.runtime.wandb_access import DEFAULT_PROJECT, log_to_wandb

HEADER = ("claim", "sweep", "what it shows")
EXPERIMENTS = ("degradation", "rvae_vs_vae_depth", "rvae_vs_vae", "grad_explosion", "bottleneck")


def _values(values: list) -> str:
    """``2-5, 7`` for the integers 2, 3, 4, 5, 7; other values listed as they are."""
    try:
        numbers = sorted(int(v) for v in values)
    except (TypeError, ValueError):
        return ", ".join(str(v) for v in values)
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def paired_verdicts(pairs: pd.DataFrame, row: str, residual: str, quantity: str) -> str:
    """Where the residual model is better, worse, within noise: ``RAE better at n_layers 2-9 (...)``."""
    lines = pairs[(pairs.residual == residual) & (pairs.quantity == quantity) & (pairs.over == "seeds")]
    if lines.empty:
        return "no cell with both models completed"
    name = residual.upper()
    parts = []
    for verdict in ("better", "worse", "within noise", "same", "one seed"):
        cells = lines[lines.verdict == verdict]
        if cells.empty:
            continue
        where = f"{row} {_values(cells[row].tolist())}"
        if verdict in ("better", "worse"):
            size = cells["mean"].abs()
            spread = f"{size.min():.3f} to {size.max():.3f}" if len(cells) > 1 else f"{size.iloc[0]:.3f}"
            parts.append(f"{name} {verdict} at {where} (by {spread})")
        else:
            parts.append(f"{verdict} at {where}")
    if not (lines.verdict == "better").any():
        parts.insert(0, f"{name} better nowhere")
    over = pairs[(pairs.residual == residual) & (pairs.quantity == quantity) & (pairs.over == "classes")]
    if not over.empty:
        c = over.iloc[0]
        parts.append(f"over the {c.n} classes {c['mean']:+.3f} [{c.low:+.3f}, {c.high:+.3f}]: {c.verdict}")
    return "; ".join(parts)


def _degradation(df: pd.DataFrame, pairs: pd.DataFrame, row: str, quantity: str) -> str:
    """The AE's own curve (its best and its deepest cell, means over seeds), then RAE against AE."""
    done = df[(df.status == "completed") & (df.model == "ae")]
    curve = done.groupby(row)[quantity].mean().dropna()
    if curve.empty:
        return paired_verdicts(pairs, row, "rae", quantity)
    best = curve.idxmin() if quantity == "train_loss" else curve.idxmax()
    deepest = max(curve.index, key=_number)
    own = f"AE {curve[best]:.3f} at its best ({row} {best}), {curve[deepest]:.3f} at {row} {deepest}"
    if best == deepest:
        own = f"AE at its best at the deepest, {row} {deepest} ({curve[best]:.3f})"
    return f"{own}; {paired_verdicts(pairs, row, 'rae', quantity)}"


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("-inf")


def _explosion(df: pd.DataFrame) -> str:
    """Per clipping setting: max ``g_norm`` from the second epoch on (the seeds' range), and divergences."""
    parts = []
    for clip, group in df.groupby("gradient_clip_val", sort=True):
        late = group[group.status == "completed"].get("g_norm_max_late", pd.Series(dtype=float)).dropna()
        text = f"clip {clip}: max g_norm from epoch 2 " + (
            f"{late.min():.4g} to {late.max():.4g} over {len(late)} seeds" if len(late) else "not logged"
        )
        diverged = int((group.status == "diverged").sum())
        parts.append(text + (f", {diverged} diverged" if diverged else ""))
    return "; ".join(parts)


def _bottleneck(df: pd.DataFrame) -> str:
    """Per model: mean test AUROC at the smallest and the largest ``latent_dim``."""
    done = df[df.status == "completed"]
    means = done.groupby(["model", "latent_dim"])["test_auroc"].mean()
    parts = []
    for model in sorted(done.model.unique()):
        per_dim = means[model].sort_index()
        text = f"{model.upper()} test AUROC {per_dim.iloc[0]:.3f} at latent_dim {per_dim.index[0]}"
        if len(per_dim) > 1:
            text += f", {per_dim.iloc[-1]:.3f} at {per_dim.index[-1]}"
        parts.append(text)
    return "; ".join(parts)


CLAIMS = (  # claim, experiment, what to say of its sweep
    ("plain AEs degrade with depth, residual ones do not: final train loss", "degradation",
     lambda df, pairs, row: _degradation(df, pairs, row, "train_loss")),
    ("plain AEs degrade with depth, residual ones do not: test AUROC", "degradation",
     lambda df, pairs, row: _degradation(df, pairs, row, "test_auroc")),
    ("RVAE beats VAE on AUROC, across depths", "rvae_vs_vae_depth",
     lambda df, pairs, row: paired_verdicts(pairs, row, "rvae", "test_auroc")),
    ("RVAE beats VAE on AUROC, per held-out class", "rvae_vs_vae",
     lambda df, pairs, row: paired_verdicts(pairs, row, "rvae", "test_auroc")),
    ("clipping stops the gradient explosion", "grad_explosion", lambda df, pairs, row: _explosion(df)),
    ("a wide bottleneck hurts the AE, not the VAE", "bottleneck", lambda df, pairs, row: _bottleneck(df)),
)  # fmt: skip


def claim_rows(study_dir: Path, data: str | None = None) -> list[tuple[str, str, str]]:
    """``(claim, sweep, what it shows)`` for each of the study's claims, from the sweeps in ``study_dir``."""
    found: dict[str, tuple[pd.DataFrame, pd.DataFrame, str] | str] = {}
    for experiment in EXPERIMENTS:
        sweep = study_dir / (experiment + (f"_{data}" if data else ""))
        if not sweep.is_dir():
            found[experiment] = f"not run (no {sweep.name}/)"
            continue
        try:
            df, _, axes = collect(sweep)
        except NoResultsError:
            found[experiment] = f"not run ({sweep.name}/ holds no job)"
            continue
        if not (df.status == "completed").any():
            found[experiment] = f"no completed job (see {sweep.name}/report.md)"
            continue
        row = table_rows(df, axes)
        if len(row) > 1:  # one line per claim cannot say it: the report's tables can
            found[experiment] = f"varies {', '.join(row)} together: see {sweep.name}/report.md"
            continue
        found[experiment] = (df, stats.paired_table(df, row), row[0])
    rows = []
    for claim, experiment, say in CLAIMS:
        got = found[experiment]
        shows = got if isinstance(got, str) else say(*got)
        rows.append((claim, experiment + (f"_{data}" if data else ""), shows))
    return rows


def claims_page(study_dir: Path, rows: list[tuple[str, str, str]]) -> str:
    """``claims.md``: a table of the claims and what each sweep in ``study_dir`` shows (``claim_rows``)."""
    table = markdown([[claim, f"`{sweep}`", shows] for claim, sweep, shows in rows], list(HEADER))
    return "\n\n".join([
        f"# The study's claims, from the sweeps in `{study_dir}`",
        "Better and worse: residual minus plain model paired by seed, where the 95 % interval of the mean "
        "difference is clear of 0 (means given); within noise otherwise. For the train loss, lower is "
        "better. Each sweep's `report.md` has the tables, and `paired.csv` every interval.",
        table,
    ]) + "\n"  # fmt: skip


def upload(study_dir: Path, data: str | None, rows: list[tuple[str, str, str]], page: Path) -> None:
    """A W&B run of job type ``claims`` in the sweeps' project: the claims as a table, and the page."""
    sweeps = [study_dir / (experiment + (f"_{data}" if data else "")) for experiment in EXPERIMENTS]
    project = next(  # the project the study's sweeps logged to
        (wandb_project(sweep) for sweep in sweeps if (sweep / "multirun.yaml").is_file()), DEFAULT_PROJECT
    )
    name = f"claims-{study_dir.name}" + (f"-{data}" if data else "")
    table = pd.DataFrame(rows, columns=list(HEADER))
    log_to_wandb(
        study_dir, project=project, name=name, job_type="claims", tables={"claims": table}, files=(page,)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_dir", type=Path, help="the directory of `make study`'s sweeps (STUDY_DIR)")
    parser.add_argument("--data", help="the sweeps' suffix, as `make study DATA=...` names them (digits)")
    parser.add_argument("--wandb", action="store_true", help="also log the claims to W&B, as a run")
    args = parser.parse_args(argv)
    if not args.study_dir.is_dir():
        print(
            f"error: {args.study_dir} is not a directory: give the STUDY_DIR of `make study`.",
            file=sys.stderr,
        )
        return 2
    study_dir = args.study_dir.resolve()
    rows = claim_rows(study_dir, args.data)
    page = study_dir / f"claims{'_' + args.data if args.data else ''}.md"
    page.write_text(claims_page(study_dir, rows))
    print(page.read_text())
    if args.wandb:
        upload(study_dir, args.data, rows, page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
