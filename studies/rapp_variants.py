"""Which RaPP variant moves the figure on this backbone: SAP and NAP over subsets of the pathway's
layers, and NAP with a stricter guard, from each job's best checkpoint of an ``experiment=rapp`` sweep.

    python -m studies.rapp_variants logs/study/rapp_mnist_5k --seeds 0

Every variant is scored on each job's validation split and its test split. The variant reported for
a model is the one with the best mean validation AUROC over the model's jobs; its test AUROC is then
given beside the reconstruction error's, so the choice is never made on the figures it is reported
with. Writes ``rapp_variants.csv`` (one row per job and variant) into the sweep and prints the tables.
"""

import argparse
from pathlib import Path

import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from src.analysis.markdown import markdown
from src.data.datamodule import OneClassDataModule
from src.models import rapp
from src.models.module import NAP_FIT_SAMPLES, AnomalyAutoEncoder
from src.runtime.records import read_metrics

GUARDS = (None, 1e-4, 1e-3, 1e-2)  # NAP's rtol: None is the default, max(N, D) * eps


def layer_sets(n: int) -> dict[str, list[int]]:
    """Subsets of the ``n`` pathway layers (0 the input space, 1 the input projection, last the code)."""
    return {"all": list(range(n)), "without the input": list(range(1, n)), "input and projection": [0, 1]}


def fit_guarded(d: torch.Tensor) -> dict[float | None, rapp.NapStatistics]:
    """``rapp.fit_nap(d)`` with each guard of ``GUARDS``, from one eigendecomposition."""
    d = d.double()
    mean = d.mean(dim=0)
    eigenvalues, vectors = torch.linalg.eigh((d - mean).T @ (d - mean))
    s, v = eigenvalues.clamp(min=0).sqrt().flip(0), vectors.flip(1)
    stats = {}
    for rtol in GUARDS:
        keep = s > s[0] * (max(d.shape) * torch.finfo(torch.float32).eps if rtol is None else rtol)
        stats[rtol] = rapp.NapStatistics(mean.float(), (v[:, keep] / s[keep]).float())
    return stats


@torch.no_grad()
def pathway(model: AnomalyAutoEncoder, loader) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per layer, the differences of every sample of ``loader``, and the labels."""
    batches = [(model.net.pathway_differences(x), y) for x, y in loader]
    layers = [torch.cat([d[i] for d, _ in batches]) for i in range(len(batches[0][0]))]
    return layers, torch.cat([y for _, y in batches])


def job_rows(job_dir: Path) -> list[dict]:
    record = read_metrics(job_dir)
    checkpoint = record["best_checkpoint"]
    model = AnomalyAutoEncoder.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    settings = torch.load(checkpoint, map_location="cpu", weights_only=True)["datamodule_hyper_parameters"]
    datamodule = OneClassDataModule(**settings)
    datamodule.setup("fit")
    train, _ = pathway(model, datamodule.normal_dataloader(NAP_FIT_SAMPLES))
    splits = {
        "val": pathway(model, datamodule.val_dataloader()),
        "test": pathway(model, datamodule.test_dataloader()),
    }
    data = record["data"]  # the class a job holds out: its anomaly, or under unimodal its one normal class
    held_out = data["normal_class"] if data.get("protocol") == "unimodal" else data["anomaly_class"]
    job = {"job": job_dir.name, "model": record["model_name"], "seed": record["seed"], "class": held_out}
    rows = []
    for name, layers in layer_sets(len(train)).items():
        stats = fit_guarded(torch.cat([train[i] for i in layers], 1))
        for split, (diffs, labels) in splits.items():
            picked = [diffs[i] for i in layers]
            scored = {("SAP", name): rapp.sap(picked)}
            scored |= {("NAP", name + ("" if g is None else f", guard {g:g}")): rapp.nap(picked, s)
                       for g, s in stats.items()}  # fmt: skip
            for (score, variant), values in scored.items():
                auroc = roc_auc_score(labels.numpy(), values.numpy())
                rows.append(job | {"score": score, "variant": variant, "split": split, "auroc": auroc})
        if name == "all":
            for split, (diffs, labels) in splits.items():
                auroc = roc_auc_score(labels.numpy(), rapp.layer_errors(diffs)[:, 0].numpy())
                rows.append(job | {"score": "recon", "variant": "input", "split": split, "auroc": auroc})
    return rows


def summary(df: pd.DataFrame) -> str:
    """Per model and score, the variant with the best mean val AUROC and its test AUROC (mean ± std
    over the held-out classes), beside RaPP's own ("all") and the reconstruction error; then the chosen
    variant minus the reconstruction error, per seed (mean over the classes)."""
    test = df[df.split == "test"].set_index(["model", "score", "variant", "seed", "class"]).auroc.sort_index()
    val = df[df.split == "val"].groupby(["model", "score", "variant"]).auroc.mean()
    lines = []
    for model in sorted(df.model.unique()):
        recon = test.loc[(model, "recon", "input")]
        per_class = recon.groupby("class").mean()
        line = [model, f"{per_class.mean():.3f} ± {per_class.std():.3f}"]
        for score in ("SAP", "NAP"):
            chosen = val.loc[(model, score)].idxmax()
            for variant in ("all", chosen):
                ours = test.loc[(model, score, variant)].groupby("class").mean()
                line.append(f"{variant}: {ours.mean():.3f} ± {ours.std():.3f}")
            gain = (test.loc[(model, score, chosen)] - recon).groupby("seed").mean()
            line.append(", ".join(f"{g:+.3f}" for g in gain))
        lines.append(line)
    header = ["model", "recon", "SAP, all layers", "SAP, chosen on val", "SAP chosen − recon, per seed",
              "NAP, all layers", "NAP, chosen on val", "NAP chosen − recon, per seed"]  # fmt: skip
    return markdown(lines, header)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--seeds", type=int, nargs="*", help="only the jobs of these seeds (default: all)")
    args = parser.parse_args(argv)
    jobs = sorted(p.parent for p in args.sweep_dir.glob("*/metrics.json"))
    rows = []
    for job in jobs:
        record = read_metrics(job)
        if record.get("status") == "completed" and (not args.seeds or record["seed"] in args.seeds):
            rows += job_rows(job)
    if not rows:
        raise SystemExit(f"error: {args.sweep_dir} holds no completed job of an experiment=rapp sweep")
    df = pd.DataFrame(rows)
    df.to_csv(args.sweep_dir / "rapp_variants.csv", index=False)
    table = df.groupby(["model", "score", "variant", "split"]).auroc.mean().unstack("split")
    print(table.round(3).to_markdown())
    print()
    print(summary(df))


if __name__ == "__main__":
    main()
