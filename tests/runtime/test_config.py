import inspect
from pathlib import Path

import pytest
import torch
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from src.data.datamodule import OneClassDataModule
from src.models.module import AnomalyAutoEncoder
from src.runtime.composition import check_command_line
from src.runtime.config import ConfigError, check_config, register_configs
from src.runtime.instantiate import instantiate_callbacks
from tests.conftest import REPO, compose_train
from tests.helpers.cli import run_main

BAD_VALUES = [
    ("model.n_layers=-1", "model.n_layers=-1 is invalid"),
    ("model.latent_dim=65", "model.latent_dim=65 is invalid: it must be at most the input size"),
    ("model.block=bottleneck", "model.block='bottleneck' is invalid"),
    ("model.lr=0", "model.lr=0.0 is invalid"),
    ("data.anomaly_ratio=1.5", "data.anomaly_ratio=1.5 is invalid"),
    ("data.anomaly_ratio=0", "data.anomaly_ratio=0.0 is invalid"),
    ("data.val_fraction=1", "data.val_fraction=1.0 is invalid"),
    ("data.anomaly_class=10", "data.anomaly_class=10 is not a class"),
    ("data.anomaly_class=O", "data.anomaly_class='O' is not a class"),
    ("data.batch_size=1", "data.batch_size=1 is invalid"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1 is invalid"),
    ("trainer.precision=16-mixed", "trainer.precision=16-mixed is not supported: float16 mixed precision"),
    ("data.num_workers=-1", "data.num_workers=-1 is invalid: it must be >= 0"),
    ("seed=-1", "seed=-1 is invalid: it must be an integer from 0 to 4294967295"),
    ("seed=4294967296", "seed=4294967296 is invalid"),
    ("seed=zero", "seed='zero' is invalid"),
    ("trainer.max_epochs=-5", "trainer.max_epochs=-5 is invalid: it must be an integer >= 0, or -1"),
    ("trainer.max_steps=-2", "trainer.max_steps=-2 is invalid"),
    ("trainer.max_epochs=1.5", "trainer.max_epochs=1.5 is invalid"),
    ("trainer.log_every_n_steps=-1", "trainer.log_every_n_steps=-1 is invalid: it must be an integer >= 1"),
    (
        "trainer.check_val_every_n_epoch=0",
        "trainer.check_val_every_n_epoch=0 is invalid: it must be an integer >= 1",
    ),
    ("threads=0", "threads=0 is invalid: it must be the number of CPU threads torch uses"),
    ("threads=two", "threads='two' is invalid"),
    ("threads=true", "threads=True is invalid"),
    ("float32_matmul_precision=tf32", "float32_matmul_precision='tf32' is invalid: it must be 'highest'"),
]


@pytest.mark.parametrize("override,message", BAD_VALUES)
def test_out_of_range_values_are_named(override: str, message: str) -> None:
    cfg = compose_train([override])
    with pytest.raises(ConfigError, match="nothing was run") as err:
        check_config(cfg)
    assert message in str(err.value)


def test_keys_forced_in_with_plus_are_rejected() -> None:
    with pytest.raises(ConfigError, match=r"model.n_layer is not a setting of model"):
        check_config(compose_train(["+model.n_layer=3"]))


def test_emnist_split_is_checked_with_the_allowed_list() -> None:
    cfg = compose_train(["data=emnist", "data.split=bymonth"])
    with pytest.raises(ConfigError, match=r"data.split='bymonth' is not an EMNIST split: choose one of"):
        check_config(cfg)


def test_several_bad_values_are_reported_together() -> None:
    cfg = compose_train(["model.n_layers=-2", "data.anomaly_ratio=2"])
    with pytest.raises(ConfigError) as err:
        check_config(cfg)
    assert "model.n_layers=-2" in str(err.value) and "data.anomaly_ratio=2.0" in str(err.value)


@pytest.mark.parametrize(
    "override,message",
    [
        ("model.n_layers=six", "Value 'six' of type 'str' could not be converted to Integer"),
        ("model.n_layer=3", "Could not override 'model.n_layer'"),
        ("data.batch_size=big", "could not be converted to Integer"),
        ("data.anomaly_ratio=lots", "could not be converted to Float"),
    ],
)
def test_wrong_types_and_typos_fail_at_composition(override: str, message: str) -> None:
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_train([override])
    assert message in str(err.value) + str(err.value.__cause__)


@pytest.mark.parametrize(
    "overrides,gpus,message",
    [
        (["trainer=gpu"], 0, "trainer.accelerator=gpu asks for a CUDA GPU, but torch sees none"),
        (["trainer=ddp"], 0, "trainer.accelerator=gpu asks for a CUDA GPU, but torch sees none"),
        (["trainer=gpu", "trainer.devices=4"], 2, "trainer.devices=4 asks for more GPUs than torch sees (2)"),
        (["trainer=gpu"], 1, None),
        (["trainer=ddp"], 2, None),  # devices=-1: all of them
        (["trainer=cpu"], 0, None),
    ],
)
def test_a_gpu_that_is_not_there_is_named_before_anything_runs(monkeypatch, overrides, gpus, message) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    cfg = compose_train(overrides)
    if message is None:
        check_config(cfg)
        return
    with pytest.raises(ConfigError, match="nothing was run") as err:
        check_config(cfg)
    assert message in str(err.value) and "trainer" in str(err.value)


@pytest.mark.parametrize(
    "override",
    [
        "seed=4294967295",
        "trainer.max_epochs=-1",
        "trainer.max_steps=0",
        "data.num_workers=2",
        "trainer.log_every_n_steps=0",
        "threads=1",
        "float32_matmul_precision=medium",
    ],
)
def test_values_at_the_edge_of_the_range_pass(override: str) -> None:
    check_config(compose_train([override]))


def test_the_defaults_pass() -> None:
    for model in ("ae", "vae", "rae", "rvae", "rvae_original"):
        check_config(compose_train([f"model={model}"]))


def test_cli_bad_value_stops_before_any_data_with_one_line(tmp_path: Path, capfd) -> None:
    # EMNIST is absent here: reaching the data would give a different error.
    assert run_main("train", "model.n_layers=-1", "logger=csv", f"hydra.run.dir={tmp_path}") == 2
    output = "".join(capfd.readouterr())
    errors = [line for line in output.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "model.n_layers=-1 is invalid" in errors[0]
    assert "Traceback" not in output and "data.root" not in output
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hydra", "train.log"]


def test_cli_cfg_job_prints_the_composed_config(capfd) -> None:
    assert run_main("train", "--cfg=job") == 0
    out = capfd.readouterr().out
    assert "n_layers: 4" in out and "_target_: src.models.module.AnomalyAutoEncoder" in out


@pytest.mark.parametrize("app", ["train", "eval"])
def test_help_shows_examples_groups_and_the_config(app: str, capfd) -> None:
    assert run_main(app, "--help") == 0
    out = capfd.readouterr().out
    assert out.startswith(f"python -m src.{app}: ")
    assert f"  python -m src.{app} " in out  # its examples
    assert "== Configuration groups ==" in out and "trainer: cpu, ddp" in out
    groups = out.split("== Configuration groups ==")[1].split("== Config ==")[0]
    assert "schema" not in groups  # the structured schemas are not offered as choices
    assert "ckpt_path:" in out  # the composed config


def test_a_callback_rejecting_its_settings_is_a_config_error_naming_it(make_cfg) -> None:
    cfg = make_cfg(
        "callbacks.last_checkpoint.every_n_train_steps=20", "+callbacks.last_checkpoint.every_n_epochs=1"
    )
    with pytest.raises(
        ConfigError, match=r"^Invalid settings for callbacks\.last_checkpoint, nothing was run: "
    ):
        instantiate_callbacks(cfg)


@pytest.mark.parametrize(
    "argv,says",
    [
        (["model=rvea"], "Could not find 'model/rvea' Available options in 'model': ae rae rvae"),
        (["model.n_layrs=3"], "Did you mean 'model.n_layers'?"),
        (
            ["-m", "model=ae,raee", "model.n_layers=1,2"],
            "model=raee: In 'train': Could not find 'model/raee'",
        ),
        (["modle=ae"], "Did you mean 'model'?"),
        (["model.n_layers=six"], "could not be converted to Integer"),
    ],
)
def test_a_command_line_hydra_cannot_compose_exits_2_with_a_suggestion(argv, says, capsys) -> None:
    register_configs()
    with pytest.raises(SystemExit) as stop:
        check_command_line("train", argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("Invalid command line, nothing was run: ")
    assert says in err and "\n" not in err.rstrip("\n")  # one paragraph


def test_a_command_line_that_composes_goes_on_to_hydra(capsys) -> None:
    register_configs()
    check_command_line(
        "train", ["-m", "model=ae,rae", "model.n_layers=1,2", "data=digits", "hydra/launcher=basic"]
    )
    check_command_line("eval", ["ckpt_path=x", "stage=val"])
    check_command_line("train", ["--cfg", "job", "model.n_layrs=3"])  # Hydra's own flags: left to Hydra
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("group", ["model", "data"])
def test_every_default_is_the_constructors_and_no_yaml_restates_one(group: str) -> None:
    cls = {"model": AnomalyAutoEncoder, "data": OneClassDataModule}[group]
    defaults = {n: p.default for n, p in inspect.signature(cls).parameters.items() if n != "input_dim"}
    composed = compose_train([f"{group}={'ae' if group == 'model' else 'emnist'}"])[group]
    assert {k: v for k, v in composed.items() if k not in ("_target_", "root")} == {
        k: v for k, v in defaults.items() if k != "root"
    }
    for path in sorted((REPO / "conf" / group).glob("*.yaml")):
        settings = {k: v for k, v in (yaml.safe_load(path.read_text()) or {}).items() if k != "defaults"}
        restated = [k for k, v in settings.items() if k in defaults and v == defaults[k]]
        assert restated == [], f"{path.name} restates the constructor's default of {restated}"
