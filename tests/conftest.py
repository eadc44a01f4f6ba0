import csv
import os
from pathlib import Path

import pytest
from hydra import compose, initialize
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from src.runtime.config import register_configs
from src.train import train
from tests.helpers.idx import write_fake_emnist

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # W&B must never reach for the network or prompt during tests.
    os.environ["WANDB_MODE"] = "offline"
    os.environ["WANDB_SILENT"] = "true"


BASE_OVERRIDES = ["data=digits", "trainer=cpu", "logger=csv", "trainer.max_epochs=1"]


def compose_train(overrides: list[str]) -> DictConfig:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize(version_base="1.3", config_path="../conf"):
        return compose("train", overrides=BASE_OVERRIDES + overrides, return_hydra_config=True)


def as_run(cfg: DictConfig, out: Path) -> DictConfig:
    """``cfg`` as Hydra would run it with its output directory at ``out``, without a progress bar."""
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
        cfg.hydra.runtime.output_dir = str(out)
        cfg.trainer.enable_progress_bar = False
    HydraConfig().set_config(cfg)
    return cfg


def eval_cfg(out: Path, *overrides: str) -> DictConfig:
    """Compose ``eval.yaml`` with overrides, as ``python -m src.eval`` would run it in ``out``."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize(version_base="1.3", config_path="../conf"):
        cfg = compose("eval", overrides=list(overrides), return_hydra_config=True)
    return as_run(cfg, out)


@pytest.fixture
def make_cfg(tmp_path: Path):
    """Compose ``train.yaml`` with overrides, every output under ``tmp_path``, as Hydra would run it."""

    def make(*overrides: str) -> DictConfig:
        cfg = compose_train(list(overrides))
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path)
            cfg.paths.log_dir = str(tmp_path)
            cfg.hydra.runtime.output_dir = str(tmp_path)
            cfg.trainer.enable_progress_bar = False
        HydraConfig().set_config(cfg)
        return cfg

    yield make
    GlobalHydra.instance().clear()


@pytest.fixture
def cfg_train(make_cfg) -> DictConfig:
    return make_cfg()


@pytest.fixture(scope="session")
def fake_emnist(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A small EMNIST ``byclass`` (62 classes) in torchvision's raw layout."""
    root = tmp_path_factory.mktemp("emnist")
    return root, write_fake_emnist(root, "byclass", n_classes=62, per_class=(40, 12))


def csv_metric(output_dir: str, key: str) -> list[float]:
    """Every value of ``key`` a run wrote to its CSV log, in order."""
    with open(Path(output_dir) / "csv" / "metrics.csv") as f:
        return [float(r[key]) for r in csv.DictReader(f) if r.get(key)]


def epoch_losses(make_cfg, tmp_path: Path, name: str, *overrides: str) -> list[float]:
    """``train/epoch_loss`` of a 4-epoch digits run, written under ``tmp_path / name``."""
    cfg = make_cfg("trainer.max_epochs=4", "seed=0", *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / name)
    train(cfg)
    return csv_metric(cfg.paths.output_dir, "train/epoch_loss")
