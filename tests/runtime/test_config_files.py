"""Every experiment and debug config composes, and does what it says."""

import itertools
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import OmegaConf

from src.runtime.composition import check_command_line
from src.runtime.config import register_configs
from src.runtime.instantiate import instantiate_trainer
from tests.conftest import REPO, compose_train

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
DEBUGS = sorted(p.stem for p in (REPO / "conf" / "debug").glob("*.yaml"))
# jobs per sweep, as docs/experiments.md lists them
VARIANTS = ("ae", "vae", "rae", "rvae")
JOBS = {
    "degradation": 60,
    "rvae_vs_vae": 90,
    "rvae_vs_vae_depth": 60,
    "grad_explosion": 6,
    "bottleneck": 36,
    "rapp": 120,
    "rapp_unimodal": 120,
}


def sweep_jobs(params: dict) -> list[list[str]]:
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    values = [[f"{o.key_or_group}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    return [list(job) for job in itertools.product(*values)]


def test_the_experiment_and_debug_configs_are_those_tested() -> None:
    assert set(EXPERIMENTS) == set(JOBS) and DEBUGS == ["fdr", "limit", "overfit"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_an_experiment_composes_to_its_sweep_and_every_job_composes(name: str) -> None:
    cfg = compose_train([f"experiment={name}"])
    assert cfg.task_name == name and cfg.hydra.mode == RunMode.MULTIRUN
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    jobs = sweep_jobs(params)
    assert len(jobs) == JOBS[name]
    assert "seed=2" in {o for job in jobs for o in job}  # three seeds in every study sweep
    register_configs()
    check_command_line(
        "train", [f"experiment={name}", "data=digits", *[f"{k}={v}" for k, v in params.items()]]
    )
    if name == "grad_explosion":  # a deep RAE, with and without clipping
        assert (cfg.model.n_layers, cfg.model.residual, cfg.model.variational) == (20, True, False)
        assert {j[0] for j in jobs} == {"trainer.gradient_clip_val=null", "trainer.gradient_clip_val=1.0"}
    if name.startswith("rapp"):  # the four variants, every class on the side the protocol names
        assert {o for job in jobs for o in job if o.startswith("model=")} == {f"model={m}" for m in VARIANTS}
        unimodal = name == "rapp_unimodal"
        assert (cfg.data.protocol, cfg.data.anomaly_ratio) == (
            ("unimodal", 0.5) if unimodal else ("multimodal", 0.35)
        )
        swept = "data.normal_class" if unimodal else "data.anomaly_class"
        assert {o for job in jobs for o in job if o.startswith(swept)} == {f"{swept}={c}" for c in range(10)}


@pytest.mark.parametrize("name", DEBUGS)
def test_a_debug_config_sets_its_trainer_settings_and_lightning_takes_them(name: str, tmp_path: Path) -> None:
    cfg = compose_train([f"debug={name}"])
    written = OmegaConf.load(REPO / "conf" / "debug" / f"{name}.yaml").trainer
    # trainer.max_epochs=1 is the tests' own override (tests.conftest), given after the config
    assert all(cfg.trainer[k] == v for k, v in written.items() if k != "max_epochs")
    trainer = instantiate_trainer(cfg, callbacks=[], default_root_dir=str(tmp_path))
    if "fast_dev_run" in written:
        assert trainer.fast_dev_run
    if "overfit_batches" in written:
        assert trainer.overfit_batches == written.overfit_batches
    if "limit_train_batches" in written:
        assert trainer.limit_train_batches == written.limit_train_batches
