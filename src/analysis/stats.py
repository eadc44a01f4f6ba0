"""Residual against plain model, paired by seed: the numbers behind the study's claims.

A seed gives AE and RAE (and VAE and RVAE) of the same depth the same initial weights, the same batches
and the same noise (they hold the same parameters; only the skip differs), so the per-seed difference
is the effect of the skip, with the seed-to-seed spread that both share taken out. Per cell of a sweep:
the mean difference over the seeds both models completed, and a 95 % t-interval on it.
"""

import math

import pandas as pd
from scipy import stats

from src.analysis.markdown import key_text, markdown

# (residual model, plain model, what to compare: (label, results.csv column, higher is better), ...)
PAIRS = (
    ("rvae", "vae", (("test AUROC", "test_auroc", True),)),
    ("rae", "ae", (("test AUROC", "test_auroc", True), ("final train loss", "train_loss", False))),
)
LEVEL = 0.95


def paired_differences(
    df: pd.DataFrame, row: list[str], residual: str, plain: str, value: str
) -> pd.DataFrame:
    """Per cell (``row`` settings): ``residual`` minus ``plain`` on ``value``, paired by seed over the
    seeds both completed. Columns: the row settings, ``n`` (seeds), ``mean``, and ``low`` and ``high``,
    the 95 % t-interval (NaN with one seed; ``mean`` itself when every seed gives the same difference)."""
    columns = [*row, "n", "mean", "low", "high"]
    done = df[(df.status == "completed") & df.model.isin([residual, plain])]
    per_seed = done.groupby([*row, "seed", "model"], dropna=False)[value].mean().unstack("model")
    if residual not in per_seed or plain not in per_seed:
        return pd.DataFrame(columns=columns)
    diff = (per_seed[residual] - per_seed[plain]).dropna()
    cells = [[*keys, *interval(d)] for keys, d in diff.groupby(level=list(range(len(row))), dropna=False)]
    return pd.DataFrame(cells, columns=columns)


def interval(values: pd.Series) -> tuple[int, float, float, float]:
    """Their number, mean, and the 95 % t-interval on the mean (NaN for one value)."""
    n, mean = len(values), float(values.mean())
    half = math.nan
    if n > 1:
        half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))
    return n, mean, mean - half, mean + half


def verdict(n: int, low: float, high: float, higher_is_better: bool) -> str:
    """``better`` or ``worse`` where the interval is clear of 0, ``same`` where every seed gave the same
    value to both (no hidden unit to skip: ``n_layers=0``), else ``within noise``."""
    if n < 2:
        return "one seed"
    if low == high == 0:
        return "same"
    if low > 0 or high < 0:
        return "better" if (low > 0) == higher_is_better else "worse"
    return "within noise"


def paired_table(df: pd.DataFrame, row: list[str]) -> pd.DataFrame:
    """Every pair and quantity of ``PAIRS`` the sweep holds, a line per cell (``paired.csv``): the models,
    the quantity (a ``results.csv`` column), the row settings, ``n``, ``mean``, ``low``, ``high``,
    ``verdict`` and ``over``: ``seeds``, or ``classes`` for the mean over held-out classes (a line of its
    own)."""
    lines = []
    for residual, plain, quantities in PAIRS:
        for _, value, higher in quantities:
            t = paired_differences(df, row, residual, plain, value)
            cells = [(tuple(c[: len(row)]), *c[len(row) :], "seeds") for c in t.itertuples(index=False)]
            if row == ["anomaly_class"] and len(t) > 1:  # the study's summary: over the held-out classes
                cells.append((("mean over classes",), *interval(t["mean"]), "classes"))
            for keys, n, mean, low, high, over in cells:
                said = verdict(n, low, high, higher)
                lines.append({"residual": residual, "plain": plain, "quantity": value,
                              **dict(zip(row, keys, strict=True)), "n": n, "mean": mean, "low": low,
                              "high": high, "verdict": said, "over": over})  # fmt: skip
    columns = ["residual", "plain", "quantity", *row, "n", "mean", "low", "high", "verdict", "over"]
    return pd.DataFrame(lines, columns=columns)


def section(table: pd.DataFrame, row: list[str]) -> list[str]:
    """``report.md``'s paired sections from ``paired_table``: one table per pair of models, and per
    quantity a count of the cells where the residual model is better, worse, or within noise."""
    parts = []
    for residual, plain, quantities in PAIRS:
        pair = table[(table.residual == residual) & (table.plain == plain)]
        if pair.empty:
            continue
        big, small = residual.upper(), plain.upper()
        cells: dict[tuple, list[str]] = {}
        counts = []
        for i, (label, value, _) in enumerate(quantities):
            found = pair[pair.quantity == value]
            for c in found.to_dict("records"):
                interval = "" if c["n"] < 2 else f" [{c['low']:+.3f}, {c['high']:+.3f}]"
                n = f"{c['n']} classes" if c["over"] == "classes" else str(c["n"])
                cells.setdefault(tuple(c[k] for k in row), ["–", ""] * len(quantities))[2 * i : 2 * i + 2] = [
                    f"{c['mean']:+.3f}{interval} ({n})",
                    c["verdict"],
                ]
            said = found[found.over == "seeds"].verdict.value_counts()
            counts.append(
                f"{label}: {big} better in {said.get('better', 0)} of {said.sum()} cells, worse in "
                f"{said.get('worse', 0)}, within noise in {said.get('within noise', 0)}"
                + "".join(f", {k} in {said[k]}" for k in ("same", "one seed") if k in said)
                + "."
            )
        header = [", ".join(row)] + [
            h for label, _, _ in quantities for h in (f"{label}, {big} − {small}", big)
        ]
        rendered = markdown([[key_text(k), *v] for k, v in cells.items()], header)
        parts += [
            f"## {big} against {small}, paired by seed",
            f"Per {', '.join(row)}: {big} minus {small} over the seeds both completed (a seed gives both the "
            "same initial weights and batches): the mean difference, its 95 % interval (t, n − 1 degrees "
            "of freedom) and the number of seeds. Better or worse where the interval is clear of 0; each "
            "cell on its own, not corrected for the number of cells. All in `paired.csv`.",
            rendered,
            " ".join(counts),
        ]
    return parts
