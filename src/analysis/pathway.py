"""``report.md``'s RaPP sections: the reconstruction error, SAP and NAP (``src.models.rapp``) side by
side per model, each pathway layer's AUROC alone, and RaPP's published figures where the setting is
theirs. Every job's test logs all three scores, so they are compared on the very same models."""

import pandas as pd

from src.analysis.markdown import markdown
from src.analysis.stats import interval

SCORES = (("recon", "test_auroc_recon"), ("SAP", "test_auroc_sap"), ("NAP", "test_auroc_nap"))
# Kim et al. 2020, mean AUROC over the classes (recon, SAP, NAP), plain MLP autoencoders; multimodal:
# each class held out in turn, anomaly ratio .35; unimodal: each class the one normal class.
PUBLISHED = {
    ("mnist", "multimodal"): {"ae": (0.825, 0.881, 0.899), "vae": (0.864, 0.907, 0.927)},
    ("mnist", "unimodal"): {"ae": (0.972, 0.980, 0.979), "vae": (0.957, 0.954, 0.976)},
    ("fashion_mnist", "multimodal"): {"ae": (0.712, 0.725, 0.734), "vae": (0.710, 0.728, 0.737)},
}


def _per_class(done: pd.DataFrame, row: str, column: str) -> pd.Series:
    """Per model and class: the mean over the seeds."""
    return done.groupby(["model", row])[column].mean().dropna()


def _mean_std(values: pd.Series) -> str:
    if values.empty:
        return "–"
    return f"{values.mean():.3f} ± {values.std():.3f}" if len(values) > 1 else f"{values.iloc[0]:.3f}"


def _published(df: pd.DataFrame) -> tuple[str, dict] | tuple[None, None]:
    """RaPP's figures for the sweep's data set and protocol (MNIST-5k: those of all of MNIST)."""
    datasets, protocols = set(df.dataset), set(df.protocol.fillna("multimodal"))
    if len(datasets) != 1 or len(protocols) != 1 or set(df.anomaly_ratio.dropna()) - {0.35, 0.5}:
        return None, None
    dataset, protocol = datasets.pop(), protocols.pop()
    figures = PUBLISHED.get(("mnist" if dataset == "mnist_5k" else dataset, protocol))
    if figures is None:
        return None, None
    where = "all of MNIST" if dataset == "mnist_5k" else dataset
    return f"RaPP ({where}, {protocol})", figures


def section(df: pd.DataFrame, row: list[str]) -> list[str]:
    """The RaPP sections of a sweep whose rows are the held-out (or normal) classes; none otherwise."""
    done = df[df.status == "completed"]
    if len(row) != 1 or "test_auroc_nap" not in done or done.test_auroc_nap.isna().all():
        return []
    row = row[0]
    label, published = _published(done)
    lines = []
    for model in sorted(done.model.unique()):
        ours = done[done.model == model]
        cells = [_mean_std(_per_class(ours, row, column)) for _, column in SCORES]
        for _, column in SCORES[1:]:  # paired: the same job's two scores, mean over seeds per class
            diff = _per_class(ours.assign(d=ours[column] - ours.test_auroc_recon), row, "d")
            n, mean, low, high = interval(diff)
            cells.append(f"{mean:+.3f}" + (f" [{low:+.3f}, {high:+.3f}]" if n > 1 else ""))
        if published is not None:
            figures = published.get(model.removeprefix("r"))
            cells += [" / ".join(f"{v:.3f}" for v in figures) if figures else "–"]
        lines.append([model, *cells])
    header = ["model", "recon", "SAP", "NAP", "SAP − recon", "NAP − recon"]
    header += [f"{label}: recon / SAP / NAP"] if published is not None else []
    layers = [c for c in done if c.startswith("test_auroc_layer_")]
    layer_lines = [
        [model, *(_mean_std(_per_class(done[done.model == model], row, c)) for c in layers)]
        for model in sorted(done.model.unique())
    ]
    per = "held-out class" if set(done.protocol.fillna("multimodal")) == {"multimodal"} else "normal class"
    return [
        "## Scores along the projection pathway (RaPP)",
        f"Test AUROC, mean ± std over the {row} values (each the mean over its seeds), of the reconstruction "
        "error, SAP and NAP, all three from the same jobs; the differences paired within each job, with a "
        f"95 % t-interval over the {row} values. Per {per}. RaPP's figures are those of plain MLP "
        "autoencoders (its AE and VAE; beside our residual twins too).",
        markdown(lines, header),
        "## Test AUROC of each pathway layer alone",
        "The AUROC of `||h_i(x) - h_i(x_hat)||^2` at each layer `i` of the encoder: 0 is the input space "
        "(the reconstruction error), then the input projection, each hidden unit, and last the code.",
        markdown(layer_lines, ["model", *(c.removeprefix("test_auroc_layer_") for c in layers)]),
    ]
