"""Reading a multirun directory: one row per job from its run record (``metrics.json``), the jobs
expected but never started, and the settings the sweep varies. What ``src.report`` and ``src.claims``
both read."""

import itertools
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from src.analysis import plots
from src.runtime.records import METRICS_FILE, read_metrics
from src.runtime.wandb_access import DEFAULT_PROJECT

COLUMNS = [
    "job", "status", "model", "n_layers", "block", "hidden_dim", "latent_dim", "dataset", "protocol",
    "anomaly_class", "anomaly_ratio", "seed", "gradient_clip_val", "epochs", "train_loss", "val_auroc",
    "test_auroc", "test_auprc", "test_auroc_recon", "test_auroc_sap", "test_auroc_nap", "g_norm_max",
    "test_normal", "test_anomaly", "wall_time_s", "torch_threads", "error",
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
NOT_AXES = {"model", "seed"}  # models are the tables' columns; seeds are what a cell averages over


class NoResultsError(RuntimeError):
    """The directory holds no job of a multirun."""


def expected_jobs(sweep_dir: Path) -> list[frozenset[str]] | None:
    """Every job's overrides as the basic sweeper expands them from ``multirun.yaml``, or None."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    if "BasicSweeper" not in str(OmegaConf.select(cfg, "hydra.sweeper._target_")):
        return None  # e.g. Optuna decides its jobs as it goes
    params = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(cfg.hydra.overrides.task)
    # per key, every "key=value" it expands to, as Hydra's basic sweeper expands it (a later override of a
    # key replaces an earlier one: the command line replaces the experiment's sweep)
    choices: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(args):
        key = override.get_key_element()
        if override.is_sweep_override():
            choices[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [frozenset(job) for job in itertools.product(*choices.values())]


def _settings(model_name: str | None, model: dict, data: dict, seed: Any, clip: Any) -> dict[str, Any]:
    return {
        "model": model_name,
        "n_layers": model.get("n_layers"),
        "block": model.get("block"),
        "hidden_dim": model.get("hidden_dim"),
        "latent_dim": model.get("latent_dim"),
        "dataset": data.get("dataset"),
        "protocol": data.get("protocol", "multimodal"),  # runs from before data.protocol: the only one
        "anomaly_class": str(data.get("anomaly_class")),
        "anomaly_ratio": data.get("anomaly_ratio"),
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
            "epochs": m.get("epochs"),
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
        # the AUROC of every score and of each pathway layer alone (test_auroc_recon, test_auroc_layer_0)
        | {k.replace("/", "_"): v for k, v in m.items() if k.startswith("test/auroc_")}
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
    df = pd.DataFrame(rows)
    layers = sorted((c for c in df if c.startswith("test_auroc_layer_")), key=lambda c: int(c.split("_")[-1]))
    df = df.reindex(columns=COLUMNS + layers)
    # a label, not a number: null (no clipping) must stay a value of its own
    df["gradient_clip_val"] = df.gradient_clip_val.map(lambda v: "null" if pd.isna(v) else f"{v:g}")
    axes = sweep_axes(df, [job_overrides(d) for d in job_dirs])
    if varies(df, "gradient_clip_val"):
        late = [late_g_norm(d) for d in job_dirs]
        df["g_norm_max_late"], df["g_norm_median_late"] = [v[0] for v in late], [v[1] for v in late]
    return df, missing, axes


def varies(df: pd.DataFrame, column: str) -> bool:
    return df[column].map(str).nunique() > 1


def table_rows(df: pd.DataFrame, axes: list[str]) -> list[str]:
    """The settings down the tables: the swept ones; without overrides that vary, the first study setting
    that does."""
    fallback = ("n_layers", "anomaly_class", "gradient_clip_val")
    return axes or [next((c for c in fallback if varies(df, c)), "n_layers")]


def wandb_project(sweep_dir: Path) -> str:
    """The W&B project the sweep's jobs logged to (``logger.wandb.project``), else the default's."""
    multirun = sweep_dir / "multirun.yaml"
    project = (
        OmegaConf.select(OmegaConf.load(multirun), "logger.wandb.project") if multirun.is_file() else None
    )
    return project or DEFAULT_PROJECT
