"""Our autoencoders beside PyOD's IForest and PCA on the same splits, measured in the same run.

For each dataset and seed, ``src.train`` trains each model (in this process, with the CSV logger) and
the PyOD detectors fit the same training normals (``data.seed`` fixes the split, the seed also seeds
IForest) and score the same test split; AUROC by scikit-learn for all. ``breast_cancer`` is a table of
30 raw features (our models standardise them; IForest needs no scaling and PyOD's PCA standardises
itself); ``digits`` are 8x8 images taken as 64-value vectors in [0, 1] (the PyOD detectors leave out
the columns constant over the training normals). Results go to
``bench_results/tabular-<time>.json``.

    python -m benchmarks.tabular --datasets breast_cancer digits --seeds 0 1 2 --epochs 50
"""

import argparse
import tempfile
from pathlib import Path

import pandas as pd
from hydra import compose, initialize
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from sklearn.metrics import roc_auc_score

from benchmarks.train_speed import save_result
from src.runtime.config import register_configs
from src.runtime.process import quiet_dependency_notices
from src.train import train


def train_ours(dataset: str, model: str, seed: int, epochs: int, out: Path) -> tuple[float, object]:
    """Test AUROC of ``model`` trained by ``src.train``, and its DataModule (the split it used)."""
    register_configs()
    GlobalHydra.instance().clear()
    overrides = [f"data={dataset}", f"model={model}", f"seed={seed}", f"data.seed={seed}",
                 f"trainer.max_epochs={epochs}", "trainer=cpu", "logger=csv"]  # fmt: skip
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = cfg.hydra.runtime.output_dir = str(out)
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
    HydraConfig().set_config(cfg)
    record, objects = train(cfg)
    return record["test/auroc"], objects["datamodule"]


def pyod_aurocs(datamodule, seed: int) -> dict[str, float]:
    """IForest and PCA fitted on the training normals, AUROC on the test split."""
    from pyod.models.iforest import IForest
    from pyod.models.pca import PCA

    x_train = datamodule.data_train.__getitems__(range(len(datamodule.data_train)))[0].numpy()
    x_test, y_test = datamodule.data_test.__getitems__(range(len(datamodule.data_test)))
    # constant columns (the digits' blank border) give PCA zero-variance components to divide by
    varying = x_train.std(axis=0) > 0
    results = {}
    for name, detector in (("IForest", IForest(random_state=seed)), ("PCA", PCA(random_state=seed))):
        detector.fit(x_train[:, varying])
        scores = detector.decision_function(x_test.numpy()[:, varying])
        results[name] = float(roc_auc_score(y_test.numpy(), scores))
    return results


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["breast_cancer", "digits"])
    p.add_argument("--models", nargs="+", default=["rvae", "ae"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--out", type=Path, default=Path("bench_results"))
    args = p.parse_args(argv)
    quiet_dependency_notices()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.datasets:
            for seed in args.seeds:
                row = {"dataset": dataset, "seed": seed}
                for model in args.models:
                    row[model.upper()], datamodule = train_ours(
                        dataset, model, seed, args.epochs, Path(tmp) / f"{dataset}-{model}-{seed}"
                    )
                rows.append(row | pyod_aurocs(datamodule, seed))
    table = pd.DataFrame(rows)
    detectors = [m.upper() for m in args.models] + ["IForest", "PCA"]
    summary = table.groupby("dataset")[detectors].agg(["mean", "std"])
    summary.columns = [f"{d} {stat}" for d, stat in summary.columns]
    print(f"\nTest AUROC, {len(args.seeds)} seeds (split and model seeded alike), {args.epochs} epochs:")
    print(table.groupby("dataset")[detectors].agg(lambda s: f"{s.mean():.3f} ± {s.std():.3f}").to_markdown())
    result = {
        "epochs": args.epochs,
        "seeds": args.seeds,
        "runs": rows,
        "summary": summary.reset_index().to_dict("records"),
    }
    save_result(result, args.out, "tabular")
    return result


if __name__ == "__main__":
    main()
