import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import wandb
import yaml
from PIL import Image

from src.analysis.claims import main as claims_main
from src.analysis.report import build_report
from src.analysis.report import main as report_main
from src.train import train
from tests.conftest import REPO
from tests.helpers import read_md
from tests.helpers.cli import run_main
from tests.helpers.wandb_file import offline_run_files, read_run


def multirun(sweep_dir: Path, *overrides: str, timeout: int = 600, **env: str) -> subprocess.CompletedProcess:
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONPATH": str(REPO)} | env
    cmd = [sys.executable, "-m", "src.train", "--multirun", "data=digits", "trainer=cpu",
           "trainer.max_epochs=1", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}",
           f"paths.root_dir={sweep_dir.parent}", *overrides]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def wandb_files(sweep_dir: Path) -> list[Path]:
    return sorted(sweep_dir.glob("*/wandb/offline-run-*/*.wandb"))


def test_multirun_then_report(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = multirun(sweep, "model=ae,rae", "model.n_layers=0,1", "logger=wandb_csv", WANDB_SILENT="false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    assert output.count("wandb: Run data is saved locally in") == 4  # W&B quiet: no banner, no summary block
    assert "wandb: Run history:" not in output
    assert "wandb: WARNING" not in output  # e.g. the deprecated `anonymous` setting Lightning passes
    assert "override existing callbacks" not in output  # one read-back callback, not one per fit/test

    # four W&B runs, named <model>-L<n_layers>-s<seed>, all in the sweep's group
    runs = wandb_files(sweep)
    assert len(runs) == 4
    names = {f"{m}-L{n}-s0" for m in ("ae", "rae") for n in (0, 1)}
    read = [read_run(p) for p in runs]
    assert {r.run.display_name for r in read} == names
    assert {r.run.run_group for r in read} == {f"train-{sweep.name}"}
    assert all(r.exit_code == 0 and "test/auroc" in r.summary for r in read)
    for r in read:  # tagged and configured as named
        model, depth, seed = r.run.display_name.split("-")
        assert {f"model:{model}", f"n_layers:{depth[1:]}", "data:digits"} <= set(r.run.tags)
        assert (r.config["model.n_layers"], r.config["seed"]) == (int(depth[1:]), int(seed[1:]))

    assert report_main([str(sweep)]) == 0
    with open(sweep / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    # every job was tested on the same split (data.seed), whose sizes each row carries
    assert len({(r["test_normal"], r["test_anomaly"]) for r in rows}) == 1
    assert int(rows[0]["test_normal"]) > 0 and int(rows[0]["test_anomaly"]) > 0
    report = read_md(sweep / "report.md")
    assert "4 jobs expected, 4 started: 4 completed; 0 missing" in report
    table = report.split("## Test AUROC per n_layers")[1].split("##")[0]
    assert "| n_layers | ae | rae |" in table
    assert table.count("(1)") == 4  # 2 depths x 2 models, one seed per cell
    for name in ("auroc_vs_depth.png", "train_loss_vs_depth.png", "steps_by_depth.png"):
        with Image.open(sweep / name) as img:
            img.verify()
            assert img.size[0] > 300


@pytest.mark.slow  # the diverging job of test_robustness covers the default suite
def test_a_failing_job_does_not_stop_the_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = multirun(sweep, "logger=csv", "+callbacks.fault._target_=tests.helpers.faults.RaiseAtStep",
                    "+callbacks.fault.step=2,-1,5")  # fmt: skip
    assert proc.returncode != 0  # the sweep reports the failure ...
    statuses = {p.parent.name: json.loads(p.read_text())["status"] for p in sweep.glob("*/metrics.json")}
    assert len(statuses) == 3  # ... after every job ran, the ones after the failure included
    assert sorted(statuses.values()) == ["completed", "failed", "failed"]
    df, missing, _ = build_report(sweep)
    assert not missing and (df.status == "failed").sum() == 2
    report = read_md(sweep / "report.md")
    assert "injected failure at step 2" in report


def _job(sweep: Path, name: str, overrides: list[str], metrics: dict | None, cfg: dict | None = None):
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if cfg is not None:
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        choices = {"hydra": {"runtime": {"choices": {"model": cfg["model_name"]}}}}
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def _metrics(model: str, n_layers: int, seed: int, auroc: float, loss: float, status="completed"):
    return {
        "status": status, "model_name": model, "seed": seed, "test/auroc": auroc, "val/auroc": auroc,
        "train/loss": loss, "model": {"n_layers": n_layers, "block": "preact"},
        "data": {"dataset": "digits", "anomaly_class": 0}, "trainer": {"gradient_clip_val": 10.0},
    }  # fmt: skip


def test_report_tables_on_known_results(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    params = {"model": "ae,rae", "model.n_layers": "1,2", "seed": "0,1,2"}
    multirun_cfg = {
        "task_name": "train",
        "hydra": {
            "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                        "params": params},
            "overrides": {"task": ["data=digits"]},
        },
    }  # fmt: skip
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(multirun_cfg))
    aurocs = {("ae", 1): [0.6, 0.7, 0.8], ("rae", 1): [0.9, 0.9, 0.9], ("ae", 2): [0.5, 0.7]}
    for (model, n), values in aurocs.items():
        for seed, auroc in enumerate(values):
            overrides = [f"model={model}", f"model.n_layers={n}", f"seed={seed}", "data=digits"]
            _job(sweep, f"{model}{n}{seed}", overrides, _metrics(model, n, seed, auroc, 10 - n))
    # rae at depth 2: seed 0 failed, seed 1 still running (no metrics.json), seed 2 never started
    failed = _metrics("rae", 2, 0, None, None, status="failed") | {"error": "RuntimeError('boom')"}
    _job(sweep, "rae20", ["model=rae", "model.n_layers=2", "seed=0", "data=digits"], failed)
    running_cfg = {"model_name": "rae", "model": {"n_layers": 2}, "data": {"dataset": "digits"},
                   "trainer": {}, "seed": 1}  # fmt: skip
    _job(sweep, "rae21", ["model=rae", "model.n_layers=2", "seed=1", "data=digits"], None, running_cfg)

    df, missing, _ = build_report(sweep)
    assert missing == [f"data=digits,model.n_layers=2,model={m},seed=2" for m in ("ae", "rae")]
    report = read_md(sweep / "report.md")
    assert "12 jobs expected, 10 started: 8 completed, 1 failed, 1 incomplete; 2 missing" in report
    table = report.split("## Test AUROC per n_layers")[1].split("##")[0]
    assert "| 1 | 0.700 ± 0.100 (3) | **0.900 ± 0.000 (3)** |" in table
    assert "| 2 | 0.600 ± 0.141 (2) | – |" in table  # nothing to compare with: no bold
    assert "`rae20`: failed (RuntimeError('boom'))" in report
    assert "`rae21`: incomplete" in report
    assert "model=rae,seed=2`: missing" in report


def test_report_against_another_sweep_gives_how_far_apart_the_cells_are(tmp_path: Path, capsys) -> None:
    """Two sweeps of the same settings (say, two machines): per quantity, the median and the largest
    difference between their cells, with both values; a sweep of other settings is refused, with this
    sweep's report left as it was."""
    here, there = tmp_path / "here", tmp_path / "there"
    aurocs = {  # (model, n_layers): per seed, here and there
        ("ae", 1): ([0.80, 0.90], [0.80, 0.90]),
        ("rae", 1): ([0.70, 0.70], [0.74, 0.74]),
        ("ae", 2): ([0.60, 0.60], [0.61, 0.61]),
        ("rae", 2): ([0.50, 0.50], [0.40, 0.40]),
        ("ae", 3): ([0.90, 0.90], None),  # here only
    }
    for (model, n), (a, b) in aurocs.items():
        for sweep, values in ((here, a), (there, b)):
            for seed, auroc in enumerate(values or []):
                overrides = [f"model={model}", f"model.n_layers={n}", f"seed={seed}"]
                metrics = _metrics(model, n, seed, auroc, 10 * auroc) | {"train/g_norm_max": 100 * auroc}
                _job(sweep, f"{model}{n}{seed}", overrides, metrics)
    assert report_main([str(here), "--against", str(there)]) == 0
    section = read_md(here / "report.md").split(f"## Against `{there}`")[1]
    # differences 0, -0.04, -0.01, +0.1: median of the four |differences| 0.025, the largest rae at 2
    assert "| test AUROC | 4 | 0.025 | +0.100 (n_layers=2, model=rae: 0.500 / 0.400) |" in section
    assert "| final train loss | 4 | 0.250 | +1.000 (n_layers=2, model=rae: 5.000 / 4.000) |" in section
    assert "| max train/g_norm | 4 | 2.5 | +10 (n_layers=2, model=rae: 50 / 40) |" in section
    assert "Cells with a test AUROC in one sweep only: 1 only here, 0 only there." in section

    other = tmp_path / "other"  # a bottleneck sweep
    for dim in (2, 4):
        metrics = _metrics("ae", 1, 0, 0.8, 8.0)
        metrics["model"]["latent_dim"] = dim
        _job(other, f"ae{dim}", [f"model.latent_dim={dim}"], metrics)
    before = read_md(here / "report.md")
    capsys.readouterr()
    assert report_main([str(here), "--against", str(other)]) == 2
    assert "that sweep varies ['latent_dim'], this one ['n_layers']" in capsys.readouterr().err
    assert read_md(here / "report.md") == before


def test_report_pairs_residual_and_plain_models_by_seed(tmp_path: Path) -> None:
    """RAE minus AE per cell over the seeds both completed: the mean, a 95 % t-interval (t(0.975, 2) =
    4.303 for 3 seeds), better or worse only where the interval is clear of 0 (lower train loss is
    better), the same for every seed, or a single seed."""
    sweep = tmp_path / "sweep"
    aurocs = {  # n_layers: (AE per seed, RAE per seed)
        0: ([0.5, 0.6, 0.7], [0.5, 0.6, 0.7]),  # no hidden unit: the same model
        1: ([0.5, 0.5, 0.5], [0.6, 0.7, 0.8]),  # +0.1, +0.2, +0.3: mean 0.2, std 0.1
        2: ([0.5, 0.5, 0.5], [0.60, 0.61, 0.62]),  # mean 0.11, std 0.01
        3: ([0.5], [0.4, 0.9]),  # one seed both completed
    }
    for n, (ae, rae) in aurocs.items():
        for model, values in (("ae", ae), ("rae", rae)):
            for seed, auroc in enumerate(values):
                loss = 5.0 - (model == "rae") * (n > 0)  # RAE's loss 1 lower at every seed from depth 1
                _job(sweep, f"{model}{n}{seed}", [f"model={model}", f"model.n_layers={n}", f"seed={seed}"],
                     _metrics(model, n, seed, auroc, loss))  # fmt: skip
    _job(sweep, "vae10", ["model=vae", "model.n_layers=1", "seed=0"], _metrics("vae", 1, 0, 0.9, 1.0))
    build_report(sweep)
    report = read_md(sweep / "report.md")
    assert "RVAE against VAE" not in report  # no RVAE to pair the VAE with
    table = report.split("## RAE against AE, paired by seed")[1].split("##")[0]
    assert "| n_layers | test AUROC, RAE − AE | RAE | final train loss, RAE − AE | RAE |" in table
    assert "| 0 | +0.000 [+0.000, +0.000] (3) | same | +0.000 [+0.000, +0.000] (3) | same |" in table
    half = 4.303 * 0.1 / 3**0.5  # 0.248
    assert f"| 1 | +0.200 [{0.2 - half:+.3f}, {0.2 + half:+.3f}] (3) | within noise | " in table
    assert "| 2 | +0.110 [+0.085, +0.135] (3) | better | -1.000 [-1.000, -1.000] (3) | better |" in table
    assert "| 3 | -0.100 (1) | one seed | -1.000 (1) | one seed |" in table
    counts = "better in {} of 4 cells, worse in 0, within noise in {}, same in 1, one seed in 1."
    assert "test AUROC: RAE " + counts.format(1, 1) in table
    assert "final train loss: RAE " + counts.format(2, 0) in table
    pairs = pd.read_csv(sweep / "paired.csv")  # the same, a line per pair, quantity and cell
    assert len(pairs) == 8 and set(pairs.quantity) == {"test_auroc", "train_loss"}
    line = pairs[(pairs.quantity == "test_auroc") & (pairs.n_layers == 2)].iloc[0]
    assert (line.residual, line.plain, line.n, line.verdict, line.over) == ("rae", "ae", 3, "better", "seeds")
    assert (line["mean"], line.low, line.high) == pytest.approx((0.11, 0.085, 0.135), abs=5e-4)

    for job in sweep.glob("rae*"):  # the RAE jobs gone: no pair, and no stale paired.csv
        shutil.rmtree(job)
    build_report(sweep)
    assert not (sweep / "paired.csv").exists() and "paired by seed" not in read_md(sweep / "report.md")


def test_report_pairs_models_over_the_held_out_classes(tmp_path: Path) -> None:
    # per class one seed each; over the classes, the differences +0.1, +0.2, +0.3: mean 0.2, std 0.1
    sweep = tmp_path / "classes"
    for digit, diff in ((0, 0.1), (1, 0.2), (2, 0.3)):
        for model, auroc in (("vae", 0.5), ("rvae", 0.5 + diff)):
            metrics = _metrics(model, 4, 0, auroc, 1.0)
            metrics["data"]["anomaly_class"] = digit
            _job(sweep, f"{model}{digit}", [f"model={model}", f"data.anomaly_class={digit}"], metrics)
    build_report(sweep)
    table = read_md(sweep / "report.md").split("## RVAE against VAE, paired by seed")[1].split("##")[0]
    assert "| 1 | +0.200 (1) | one seed |" in table
    assert "| mean over classes | +0.200 [-0.048, +0.448] (3 classes) | within noise |" in table


def test_report_rows_are_whatever_the_sweep_varied(tmp_path: Path) -> None:
    # a bottleneck sweep: its cells average over seeds only, never over the latent sizes
    sweep = tmp_path / "latent"
    for model in ("ae", "vae"):
        for latent in (2, 16):
            for seed in (0, 1):
                auroc = 0.5 + latent / 100 + (0.1 if model == "vae" else 0) + seed / 100
                metrics = _metrics(model, 4, seed, auroc, 1.0)
                metrics["model"]["latent_dim"] = latent
                overrides = [f"model={model}", f"model.latent_dim={latent}", f"seed={seed}", "data=digits"]
                _job(sweep, f"{model}{latent}{seed}", overrides, metrics)
    build_report(sweep)
    report = read_md(sweep / "report.md")
    table = report.split("## Test AUROC per latent_dim")[1].split("##")[0].strip().splitlines()
    assert table[0] == "| latent_dim | ae | vae |"
    assert table[2:] == ["| 2 | 0.525 ± 0.007 (2) | **0.625 ± 0.007 (2)** |",  # 2 before 16: numbers
                         "| 16 | 0.665 ± 0.007 (2) | **0.765 ± 0.007 (2)** |"]  # fmt: skip
    with Image.open(sweep / "auroc_vs_latent_dim.png") as img:
        img.verify()

    # two swept settings: one row per pair, and no curve over one of them that averages over the other
    sweep = tmp_path / "two"
    for beta in (0.5, 1):
        for depth in (1, 2):
            metrics = _metrics("vae", depth, 0, 0.6 + depth / 10 + beta / 100, None)
            _job(
                sweep,
                f"{beta}{depth}",
                ["model=vae", f"model.n_layers={depth}", f"model.beta={beta}"],
                metrics,
            )
    df, _, _ = build_report(sweep)
    report = read_md(sweep / "report.md")
    table = report.split("## Test AUROC per model.beta, n_layers")[1].split("##")[0]
    assert "| 0.5, 2 | 0.805 (1) |" in table and "| 1, 1 | 0.710 (1) |" in table
    assert df["model.beta"].tolist() == [0.5, 0.5, 1, 1]
    # depth and one more setting: a depth curve per beta (no AE or RAE: no train-loss plot)
    assert [p.name for p in sweep.glob("*.png")] == ["auroc_vs_depth.png"]

    # three swept settings: tables only, no curve that would average over one of them
    sweep = tmp_path / "three"
    for beta in (0.5, 1):
        for depth in (1, 2):
            for lr in (0.1, 0.01):
                overrides = ["model=vae", f"model.n_layers={depth}", f"model.beta={beta}", f"model.lr={lr}"]
                _job(sweep, f"{beta}{depth}{lr}", overrides, _metrics("vae", depth, 0, 0.7, None))
    build_report(sweep)
    assert "## Test AUROC per model.beta, model.lr, n_layers" in read_md(sweep / "report.md")
    assert not list(sweep.glob("*.png"))


def test_report_on_a_directory_without_results(tmp_path: Path, capsys) -> None:
    assert report_main([str(tmp_path)]) == 2
    assert "holds no job of a multirun" in capsys.readouterr().err


@pytest.mark.slow
def test_joblib_launcher_runs_wandb_jobs_in_parallel(tmp_path: Path, make_cfg) -> None:
    sweep = tmp_path / "sweep"
    proc = multirun(sweep, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=ae,rae",
                    "logger=wandb", "threads=1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list(sweep.glob("*/metrics.json"))) == 2
    # with the threads pinned, a job gives the numbers it gives run alone, in this process (2 threads here
    # by default on a 2-core machine: numbers that differ, e.g. test AUROC 0.553 against 0.525)
    job = json.loads(next(sweep.glob("*model=ae*/metrics.json")).read_text())
    alone, _ = train(make_cfg("model=ae", "threads=1"))
    keys = ("train/loss", "val/auroc", "test/auroc", "train/g_norm_max")
    assert [job[k] for k in keys] == [alone[k] for k in keys] and job["torch_threads"] == 1
    assert report_main([str(sweep)]) == 0
    with open(sweep / "results.csv") as f:
        assert [r["torch_threads"] for r in csv.DictReader(f)] == ["1", "1"]
    # each worker process's runs reach disk whole: the service closes them although the workers live on
    runs = [read_run(p) for p in wandb_files(sweep)]
    assert len(runs) == 2 and all(r.exit_code == 0 and "test/auroc" in r.summary for r in runs)
    assert [r.config["threads"] for r in runs] == [1, 1]
    for r in runs:
        steps = [row["trainer/global_step"] for row in r.history if "train/g_norm" in row]
        assert steps and steps == list(range(len(steps)))


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_sweep(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = multirun(sweep, "hydra/launcher=submitit_local", "model=ae,rae", "logger=csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    statuses = [json.loads(p.read_text())["status"] for p in sweep.glob("*/metrics.json")]
    assert statuses == ["completed", "completed"]


@pytest.mark.slow
def test_optuna_search_returns_the_best_val_auroc(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = multirun(sweep, "hparams_search=optuna", "hydra.sweeper.n_trials=2", "logger=csv")
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    aurocs = [json.loads(p.read_text())["val/auroc"] for p in sweep.glob("*/metrics.json")]
    assert len(aurocs) == 2 and best["best_value"] == pytest.approx(max(aurocs))


@pytest.mark.slow
def test_ddp_sim_trains_in_two_processes_and_scores_each_sample_once(tmp_path: Path) -> None:
    env = os.environ | {"WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    run = tmp_path / "run"
    # anomaly_ratio 0.42: val and test of 195 and 129 samples, shares of uneven sizes on two ranks
    cmd = [sys.executable, "-m", "src.train", "trainer=ddp_sim", "data=digits", "data.anomaly_ratio=0.42",
           "logger=csv", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
           f"hydra.run.dir={run}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "train_ddp_process_1.log").is_file()  # the second process ran
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "completed" and 0 <= metrics["test/auroc"] <= 1
    # the epoch-level values are equal on every rank and logged as synced: no Lightning advice to sync them
    assert "sync_dist=True" not in proc.stdout + proc.stderr
    # no sample repeated to even out the ranks' shares: the AUROCs are those of one process scoring each once
    assert "replicates some samples" not in proc.stdout + proc.stderr
    for stage in ("test", "val"):
        out = tmp_path / f"eval_{stage}"
        cmd = [sys.executable, "-m", "src.eval", f"ckpt_path={run}", f"stage={stage}", f"hydra.run.dir={out}"]
        scored = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert scored.returncode == 0, scored.stderr[-3000:]
        record = json.loads((out / "eval_metrics.json").read_text())
        assert record[f"{stage}/auroc"] == pytest.approx(metrics[f"{stage}/auroc"], abs=1e-6)


def _no_wandb_login(tmp_path: Path, monkeypatch) -> None:
    """No ``WANDB_MODE``, no API key, no ``~/.netrc``: where W&B itself would ask for a login."""
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_report_logs_a_summary_run_to_wandb(tmp_path: Path, monkeypatch, caplog) -> None:
    _no_wandb_login(tmp_path, monkeypatch)  # logs offline, with a warning, as training does
    sweep = tmp_path / "sweep"
    multirun_cfg = {"task_name": "degradation", "logger": {"wandb": {"project": "p"}},
                    "hydra": {"sweeper": {"params": {}}, "overrides": {"task": []}}}  # fmt: skip
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(yaml.safe_dump(multirun_cfg))
    auroc = {(model, n, seed): 0.5 + n / 10 + 0.01 * seed + (model == "rae") / 100
             for model in ("ae", "rae") for n in (1, 2) for seed in (0, 1)}  # fmt: skip
    for (model, n, seed), value in auroc.items():
        overrides = [f"model={model}", f"model.n_layers={n}", f"seed={seed}"]
        _job(sweep, f"{model}{n}s{seed}", overrides, _metrics(model, n, seed, value, 3.0 - n / 10))
    try:
        assert report_main([str(sweep), "--wandb"]) == 0
    finally:
        wandb.teardown()  # the run's file is written once the service closes it
    [run_file] = offline_run_files(sweep, "wandb/offline-run-*/run-*.wandb")
    run = read_run(run_file)
    assert (run.run.run_group, run.run.display_name, run.run.job_type) == (
        "degradation-sweep", "report-sweep", "report")  # fmt: skip
    assert run.exit_code == 0
    logged = {key: value for row in run.history for key, value in row.items()}  # nested keys joined by "."
    assert logged["results._type"] == "table-file" and logged["auroc_vs_depth._type"] == "image-file"
    assert logged["paired._type"] == "table-file"  # RAE against AE
    for key in ("results", "paired", "auroc_vs_depth"):  # the tables and the plot are in the run's files
        assert (run_file.parent / "files" / logged[f"{key}.path"]).is_file()
    assert "No W&B credentials: logging offline" in caplog.text
    # the depth curves as W&B charts: per model and depth, the mean over the seeds
    chart = json.loads((run_file.parent / "files" / logged["test_auroc_vs_n_layers_table.path"]).read_text())
    assert chart["columns"] == ["step", "lineKey", "lineVal"]
    expected = {
        (n, model): (auroc[model, n, 0] + auroc[model, n, 1]) / 2 for model in ("ae", "rae") for n in (1, 2)
    }
    assert {(n, model): value for n, model, value in chart["data"]} == pytest.approx(expected)
    assert logged["train_loss_vs_n_layers_table._type"] == "table-file"


def test_report_and_claims_write_their_files_when_wandb_fails(tmp_path: Path) -> None:
    study = tmp_path / "study"
    _clipping_sweep(study / "grad_explosion", spike_without_clipping=50.0)
    # online with a mistyped API key: W&B refuses at once (an unreachable server, as training's test has
    # it, costs some 10 s of W&B's retries per command)
    bad_key = {"WANDB_MODE": "online", "WANDB_API_KEY": "not-a-key", "PYTHONPATH": str(REPO)}
    for cmd, written, says in (
        (["src.report", str(study / "grad_explosion")], study / "grad_explosion" / "report.md", "| null |"),
        (["src.claims", str(study)], study / "claims.md", "clip null: max g_norm from epoch 2 50 to 51"),
    ):
        proc = subprocess.run([sys.executable, "-m", *cmd, "--wandb"], cwd=REPO, env=os.environ | bad_key,
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "W&B logging failed (AuthenticationError" in proc.stderr
        assert str(written.parent) in proc.stderr
        assert says in read_md(written)


def _make_study(tmp_path: Path, py: str, *args: str, target: str = "study") -> subprocess.CompletedProcess:
    # PY and PYTHON replaced, and a stamp of our own: make prints (or fails) instead of installing or training
    cmd = ["make", "-s", target, f"PY={py}", "PYTHON=echo", f"STAMP={tmp_path / 'stamp'}",
           f"STUDY_DIR={tmp_path / 'study'}", *args]  # fmt: skip
    # without the variables of an outer make (``make test ARGS=...`` would hand its ARGS down)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "ARGS")}
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def test_make_study_runs_each_sweep_then_its_report(tmp_path: Path) -> None:
    experiments = ["degradation", "rvae_vs_vae", "rvae_vs_vae_depth", "grad_explosion", "bottleneck"]
    proc = _make_study(tmp_path, "echo", "DATA=digits", "EPOCHS=30")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "src." in line]
    expected = []
    for e in experiments:
        sweep = tmp_path / "study" / f"{e}_digits"
        expected += [
            f"-m src.train experiment={e} data=digits trainer.max_epochs=30 hydra.sweep.dir={sweep}",
            f"-m src.report {sweep}",
        ]
    assert lines == expected + [f"-m src.claims {tmp_path / 'study'} --data digits"]
    plain = _make_study(tmp_path, "echo")  # each experiment's own data and epochs
    assert (
        f"-m src.train experiment=degradation hydra.sweep.dir={tmp_path / 'study' / 'degradation'}"
        in plain.stdout
    )

    alone = _make_study(tmp_path, "echo", "DATA=digits", target="claims")
    assert alone.stdout.strip() == f"-m src.claims {tmp_path / 'study'} --data digits", alone.stderr
    to_wandb = _make_study(tmp_path, "echo", "DATA=digits", "WANDB=1")
    assert [line.endswith(" --wandb") for line in to_wandb.stdout.splitlines() if "src." in line] == [
        False, True] * len(experiments) + [True]  # fmt: skip

    fail = tmp_path / "fail.sh"  # every command fails: all still run, and make exits non-zero
    fail.write_text('#!/bin/sh\necho "$@"\nexit 1\n')
    fail.chmod(0o755)
    failing = _make_study(tmp_path, str(fail), "DATA=digits")
    assert failing.returncode != 0
    assert sum("src." in line for line in failing.stdout.splitlines()) == 2 * len(experiments) + 1


def test_claims_say_what_each_study_sweep_shows(tmp_path: Path, capsys, monkeypatch) -> None:
    study = tmp_path / "study"
    for n, (ae_loss, rae_loss) in enumerate([(1.0, 1.0), (1.0, 0.99), (2.0, 1.0)]):
        for seed in range(3):  # depth 1: RAE's loss 0.01 lower at every seed; depth 2: 1.0 lower
            for model, loss, auroc in (("ae", ae_loss, 0.9), ("rae", rae_loss, 0.9 + (seed - 1) / 10)):
                _job(study / "degradation_digits", f"{model}{n}{seed}",
                     [f"model={model}", f"model.n_layers={n}", f"seed={seed}"],
                     _metrics(model, n, seed, auroc if n else 0.9, loss + seed / 100))  # fmt: skip
    for digit, gain in ((0, 0.1), (1, 0.12), (2, 0.14)):
        for seed in range(2):
            for model, auroc in (("vae", 0.7), ("rvae", 0.7 + gain + seed / 100)):
                metrics = _metrics(model, 4, seed, auroc, 1.0)
                metrics["data"]["anomaly_class"] = digit
                overrides = [f"model={model}", f"data.anomaly_class={digit}", f"seed={seed}"]
                _job(study / "rvae_vs_vae_digits", f"{model}{digit}{seed}", overrides, metrics)
    _clipping_sweep(study / "grad_explosion_digits", spike_without_clipping=50.0)
    (study / "bottleneck_digits").mkdir()  # started, no job yet

    assert claims_main([str(study), "--data", "digits"]) == 0
    text = read_md(study / "claims_digits.md")
    assert (study / "claims_digits.md").read_text() == capsys.readouterr().out.rstrip("\n") + "\n"
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ")[2] for line in text.splitlines() if line.startswith("| ")
    }
    loss = rows["plain AEs degrade with depth, residual ones do not: final train loss"]
    assert loss == ("AE 1.010 at its best (n_layers 0), 2.010 at n_layers 2; RAE better at n_layers 1, 2 "
                    "(by 0.010 to 1.000); same at n_layers 0 |")  # fmt: skip
    auroc = rows["plain AEs degrade with depth, residual ones do not: test AUROC"]
    assert "RAE better nowhere; within noise at n_layers 1, 2; same at n_layers 0" in auroc
    assert rows["RVAE beats VAE on AUROC, across depths"] == "not run (no rvae_vs_vae_depth_digits/) |"
    per_class = rows["RVAE beats VAE on AUROC, per held-out class"]
    assert per_class.startswith(
        "RVAE better at anomaly_class 0-2 (by 0.105 to 0.145); over the 3 classes +0.125 ["
    )
    assert per_class.endswith("]: better |")
    explosion = rows["clipping stops the gradient explosion"]
    assert "clip 1: max g_norm from epoch 2 5 to 6 over 2 seeds" in explosion
    assert "clip null: max g_norm from epoch 2 50 to 51 over 2 seeds" in explosion
    assert (
        rows["a wide bottleneck hurts the AE, not the VAE"] == "not run (bottleneck_digits/ holds no job) |"
    )

    failed = _metrics("ae", 4, 0, None, None, status="failed")  # the bottleneck sweep's only job failed
    _job(study / "bottleneck_digits", "ae2", ["model=ae", "model.latent_dim=2"], failed)
    for job in (study / "degradation_digits").iterdir():  # a second swept setting, model.hidden_dim
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, "model.hidden_dim=8"]))
        copy = job.with_name(job.name + "w16")
        shutil.copytree(job, copy)
        (copy / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, "model.hidden_dim=16"]))
        metrics = json.loads((copy / "metrics.json").read_text())
        metrics["model"]["hidden_dim"] = 16
        (copy / "metrics.json").write_text(json.dumps(metrics))
    claims_main([str(study), "--data", "digits"])
    text = read_md(study / "claims_digits.md")
    assert (
        "| `degradation_digits` | varies hidden_dim, n_layers together: see degradation_digits/report.md |"
        in text
    )
    assert "| `bottleneck_digits` | no completed job (see bottleneck_digits/report.md) |" in text

    (study / "degradation_digits" / "multirun.yaml").write_text(
        yaml.safe_dump({"logger": {"wandb": {"project": "p"}}})
    )
    try:  # the same page as a W&B run in the sweeps' project, offline without a login
        _no_wandb_login(tmp_path, monkeypatch)
        assert claims_main([str(study), "--data", "digits", "--wandb"]) == 0
    finally:
        wandb.teardown()  # the run's file is written once the service closes it
    [run_file] = offline_run_files(study, "wandb/offline-run-*/run-*.wandb")
    run = read_run(run_file)
    assert (run.run.project, run.run.display_name, run.run.job_type) == ("p", "claims-study-digits", "claims")
    logged = {key: value for row in run.history for key, value in row.items()}
    assert logged["claims._type"] == "table-file"
    table = json.loads((run_file.parent / "files" / logged["claims.path"]).read_text())
    assert table["columns"] == ["claim", "sweep", "what it shows"]
    sweeps = ["rvae_vs_vae_depth_digits", "rvae_vs_vae_digits", "grad_explosion_digits", "bottleneck_digits"]
    assert [row[1] for row in table["data"]] == ["degradation_digits"] * 2 + sweeps
    logged_page = run_file.parent / "files" / "claims_digits.md"
    assert read_md(logged_page) == text and not logged_page.is_symlink()  # the page as it was then
    capsys.readouterr()

    assert claims_main([str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("dataset", "heading"),
    [
        ("mnist", "## Test AUROC per held-out MNIST digit, beside the study"),
        (
            "mnist_5k",
            "## Test AUROC per held-out digit on MNIST-5k, beside the study's figures on all of MNIST",
        ),
    ],
)
def test_a_per_digit_sweep_on_mnist_sits_beside_the_study(tmp_path: Path, dataset: str, heading: str) -> None:
    sweep = tmp_path / "per_digit"
    for model, offset in (("rvae", 0.05), ("vae", 0.0)):
        for digit in range(10):
            for seed in (0, 1):
                metrics = _metrics(model, 4, seed, 0.8 + offset + digit / 100 + seed / 50, 1.0)
                metrics["data"] = {"dataset": dataset, "anomaly_class": digit}
                overrides = [
                    f"model={model}",
                    f"data.anomaly_class={digit}",
                    f"seed={seed}",
                    f"data={dataset}",
                ]
                _job(sweep, f"{model}{digit}{seed}", overrides, metrics)
    build_report(sweep)
    report = read_md(sweep / "report.md")
    assert report.count("beside the study") == 1
    table = report.split(heading)[1].strip().split("\n\n")[0].splitlines()
    assert table[0] == "| digit | rvae (ours) | rvae (study) | vae (ours) | vae (study) |"
    # ours: mean ± std over the two seeds; the study's: its published figure for that digit
    assert table[2] == "| 0 | 0.860 ± 0.014 (2) | 0.990 | 0.810 ± 0.014 (2) | 0.980 |"
    assert table[3] == "| 1 | 0.870 ± 0.014 (2) | 0.408 | 0.820 ± 0.014 (2) | 0.380 |"
    assert len(table) == 13  # header, rule, ten digits, mean
    assert table[-1] == "| mean | 0.905 ± 0.030 (10) | 0.896 | 0.855 ± 0.030 (10) | 0.885 |"

    # the same sweep on another dataset: no published figures to set beside it
    for metrics_file in sweep.glob("*/metrics.json"):
        metrics = json.loads(metrics_file.read_text())
        metrics["data"]["dataset"] = "digits"
        metrics_file.write_text(json.dumps(metrics))
    build_report(sweep)
    assert "beside the study" not in read_md(sweep / "report.md")


def _clipping_sweep(sweep: Path, spike_without_clipping: float) -> None:
    for clip, spike in (("null", spike_without_clipping), ("1.0", 5.0)):
        for seed in (0, 1):
            metrics = _metrics("rae", 20, seed, 0.9, 1.0)
            metrics["trainer"]["gradient_clip_val"] = None if clip == "null" else 1.0
            metrics["train/g_norm_max"] = 100.0 + seed  # the first step, clipped or not
            job = _job(sweep, f"{clip}{seed}", [f"trainer.gradient_clip_val={clip}", f"seed={seed}"], metrics)
            # epoch 0: the first-step peak; epochs 1 and 2: norms 1, 2, 3 and one spike
            rows = [(0, 0, 100.0 + seed), (0, 1, 9.0)]
            rows += [(1, 2, 1.0), (1, 3, 2.0), (2, 4, 3.0 + seed), (2, 5, spike + seed)]
            (job / "csv").mkdir()
            (job / "csv" / "metrics.csv").write_text(
                "epoch,step,train/g_norm,train/loss,val/auroc\n"
                + "".join(f"{e},{s},{g},1.0,\n" for e, s, g in rows)
                + "2,5,,,0.9\n"  # an epoch-end row without a step value
            )


def test_a_clipping_sweep_reports_g_norm_after_the_first_epoch(tmp_path: Path) -> None:
    sweep = tmp_path / "clip"
    _clipping_sweep(sweep, spike_without_clipping=50.0)
    df, _, _ = build_report(sweep)
    report = read_md(sweep / "report.md")
    overall = report.split("## Max train/g_norm per gradient_clip_val")[1].split("##")[0]
    assert "| null | 100.500 ± 0.707 (2) |" in overall  # both settings: the first step's value
    late_max = report.split("## Max train/g_norm from the second epoch on")[1].split("##")[0]
    assert "| 1 | **5.500 ± 0.707 (2)** |" not in late_max  # one model: nothing to bold
    assert "| 1 | 5.500 ± 0.707 (2) |" in late_max and "| null | 50.500 ± 0.707 (2) |" in late_max
    late_median = report.split("## Median train/g_norm from the second epoch on")[1].split("##")[0]
    assert "| null | 2.750 ± 0.354 (2) |" in late_median  # median of 1, 2, 3 (+seed) and the spike
    assert df.g_norm_max_late.tolist() == [5.0, 6.0, 50.0, 51.0]

    # against a sweep whose unclipped spike was lower: the g_norm statistics are compared cell by cell
    _clipping_sweep(tmp_path / "there", spike_without_clipping=40.0)
    build_report(sweep, against=tmp_path / "there")
    section = read_md(sweep / "report.md").split("## Against")[1]
    assert "| max train/g_norm | 2 | 0 | none: every cell the same to the last digit |" in section
    late = "| max train/g_norm from the second epoch on | 2 | 5 | +10 (gradient_clip_val=null, model=rae: "
    assert late + "50.5 / 40.5) |" in section
    assert "| median train/g_norm from the second epoch on | 2 | 0 |" in section


def test_a_multirun_ends_with_a_line_per_job_and_the_report_command(tmp_path: Path, capfd) -> None:
    sweep = tmp_path / "sweep"
    args = ["-m", "data=digits", "trainer=cpu", "logger=csv", "model=ae,rae", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep}"]  # fmt: skip
    assert run_main("train", *args) == 0
    out = capfd.readouterr().out
    summary = out[out.index(f"Sweep {sweep}: 2 jobs") :].splitlines()
    assert len(summary) == 4 and summary[-1] == f"Tables and plots: python -m src.report {sweep}"
    for line, model in zip(summary[1:3], ("model=ae", "model=rae"), strict=True):
        job, status, _, auroc = line.split()
        assert model in job.split(",") and status == "completed" and 0 <= float(auroc) <= 1
        record = json.loads((sweep / job / "metrics.json").read_text())
        assert auroc == f"{record['test/auroc']:.4f}"
        # the job's own log ends with its result and where it is, as the console did
        log_lines = (sweep / job / "train.log").read_text().splitlines()
        assert f"test/auroc: {auroc}" in log_lines[-2] and log_lines[-1].endswith(f"outputs: {sweep / job}")


def test_report_sets_recon_sap_and_nap_side_by_side_beside_rapps_figures(tmp_path: Path) -> None:
    """Per model: mean ± std over the held-out classes (each the mean over its seeds), the paired
    differences with a t-interval over the classes, RaPP's figures for the setting, each layer alone."""
    sweep = tmp_path / "rapp"
    recon = {0: [0.80, 0.90], 1: [0.70, 0.70], 2: [0.60, 0.80]}  # per class, per seed
    for model in ("ae", "rae"):
        for cls, values in recon.items():
            for seed, r in enumerate(values):
                metrics = _metrics(model, 2, seed, r, 1.0)
                metrics["data"] = {"dataset": "mnist_5k", "anomaly_class": cls, "anomaly_ratio": 0.35}
                sap, nap = r + 0.1, r - 0.05 * (cls + 1)  # SAP + .1 everywhere; NAP - .05, -.1, -.15
                metrics |= {"test/auroc_recon": r, "test/auroc_sap": sap, "test/auroc_nap": nap}
                metrics |= {f"test/auroc_layer_{i}": r / (i + 1) for i in range(5)}
                overrides = [f"model={model}", f"data.anomaly_class={cls}", f"seed={seed}"]
                _job(sweep, f"{model}{cls}{seed}", overrides, metrics)
    build_report(sweep)
    report = read_md(sweep / "report.md")
    section = report.split("## Scores along the projection pathway (RaPP)")[1].split("## Test AUROC of each")[
        0
    ]
    # class means of recon .85, .70, .70: mean .750, std .087; NAP - recon: mean -.1, t(.975, 2) = 4.303,
    # std .05 / sqrt(3): half-width .124
    expected = "| ae | 0.750 ± 0.087 | 0.850 ± 0.087 | 0.650 ± 0.132 | +0.100 [+0.100, +0.100] | "
    expected += "-0.100 [-0.224, +0.024] |"
    assert expected + " 0.825 / 0.881 / 0.899 |" in section  # RaPP's AE, on all of MNIST
    assert "| rae |" in section and "RaPP (all of MNIST, multimodal): recon / SAP / NAP" in section
    layers = report.split("## Test AUROC of each pathway layer alone")[1]
    assert "| model | 0 | 1 | 2 | 3 | 4 |" in layers
    assert "| ae | 0.750 ± 0.087 | 0.375 ± 0.043 |" in layers


def test_a_sweep_without_pathway_scores_has_no_rapp_section(tmp_path: Path) -> None:
    sweep = tmp_path / "plain"
    for seed in (0, 1):
        _job(sweep, f"ae{seed}", ["model=ae", f"seed={seed}"], _metrics("ae", 2, seed, 0.8, 1.0))
    build_report(sweep)
    assert "projection pathway" not in read_md(sweep / "report.md")
