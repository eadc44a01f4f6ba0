"""Structured config schemas behind the ``model`` and ``data`` groups, and the value checks that
types cannot express. Hydra rejects a wrong type (``model.n_layers=six``) or a misspelled key at
composition; ``check_config`` rejects out-of-range values before any data is read."""

import inspect
import typing
from dataclasses import field, fields, make_dataclass
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING as MISSING_VALUE
from omegaconf import DictConfig, OmegaConf

from src.data.datamodule import OneClassDataModule, check_data_settings, input_dim_of
from src.data.sources import holds_features
from src.errors import ConfigError
from src.models.module import AnomalyAutoEncoder
from src.models.settings import check_model_settings


def _schema_type(annotation: Any) -> Any:
    """The closest type OmegaConf can check: a primitive, an optional primitive, else ``Any``
    (OmegaConf 2.3 checks neither ``Literal`` nor unions; the constructors check those values)."""
    primitives = (int, float, bool, str)
    if annotation in primitives:
        return annotation
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal and all(isinstance(a, str) for a in args):
        return str
    if len(args) == 2 and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        return inner | None if inner in primitives else Any
    return Any


def schema_of(cls: type, exclude: tuple[str, ...] = (), missing: bool = False) -> type:
    """A dataclass with one field per argument of ``cls``'s constructor, of its type and with its
    default (or ``???`` for every field, with ``missing``): the one place a setting's default is
    written is the constructor. ``_target_`` names ``cls`` (not with ``missing``)."""
    target = f"{cls.__module__}.{cls.__qualname__}"
    specs: list[tuple] = [] if missing else [("_target_", str, field(default=target))]
    for p in inspect.signature(cls).parameters.values():
        if p.name in exclude:
            continue
        default = MISSING_VALUE if missing or p.default is inspect.Parameter.empty else p.default
        specs.append((p.name, Any if missing else _schema_type(p.annotation), field(default=default)))
    return make_dataclass(f"{cls.__name__}Schema", specs)


ModelSchema = schema_of(AnomalyAutoEncoder, exclude=("input_dim",))
DataSchema = schema_of(OneClassDataModule)


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (``model_schema``, ``data_schema``, and ``eval_data_schema``
    whose every setting is ``???`` (keep the run's value), outside any group so that ``--help`` does not
    list them as choices); call before composing."""
    cs = ConfigStore.instance()
    cs.store(name="model_schema", node=ModelSchema)
    cs.store(name="data_schema", node=DataSchema)
    cs.store(name="eval_data_schema", node=schema_of(OneClassDataModule, missing=True))


def _call_with(check, settings: dict[str, Any], **extra: Any) -> None:
    """``check`` with the settings its signature names."""
    names = inspect.signature(check).parameters
    check(**{k: v for k, v in settings.items() if k in names}, **extra)


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` listing every bad setting of ``model``, ``data`` and ``trainer``."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    model = OmegaConf.to_container(cfg.model, resolve=True)
    problems = [
        f"{group}.{key} is not a setting of {group} (added with '+'?): the settings are "
        f"{[f.name for f in fields(schema) if f.name != '_target_']}."
        for group, values, schema in (("model", model, ModelSchema), ("data", data, DataSchema))
        for key in values.keys() - {f.name for f in fields(schema)}
    ]
    try:
        _call_with(check_data_settings, data)
    except ValueError as err:
        problems.append(str(err))
    try:
        input_dim = input_dim_of(data["dataset"], data.get("path"), data.get("label_column"))
        features = holds_features(data["dataset"], data.get("path"))
    except (ValueError, OSError):
        input_dim = features = None  # already reported above
    if features and model.get("output") == "sigmoid":
        problems.append(
            "model.output=sigmoid bounds reconstructions to (0, 1), but "
            f"data.dataset={data['dataset']} gives raw features, which the model standardises to "
            "unbounded values: use model.output=linear, or leave model.output=null for the data's choice."
        )
    try:
        _call_with(check_model_settings, model, input_dim=input_dim)
    except ValueError as err:
        problems.append(str(err))
    clip = cfg.trainer.get("gradient_clip_val")
    if clip is not None and not clip > 0:
        problems.append(
            f"trainer.gradient_clip_val={clip} is invalid: give a positive norm, "
            "or null to turn clipping off."
        )
    precision = str(cfg.trainer.get("precision"))
    if precision in ("16-mixed", "16"):
        problems.append(
            f"trainer.precision={precision} is not supported: float16 mixed precision scales the loss and "
            "skips every step whose gradients overflow, which the divergence check would take for a "
            "diverged run. Use trainer.precision=bf16-mixed (GPUs since Ampere, and CPUs with bfloat16) "
            "or 32-true."
        )
    problems += _run_setting_problems(cfg)
    problems += _device_problems(cfg.trainer)
    if problems:
        raise ConfigError("Invalid configuration, nothing was run: " + " ".join(problems))


def _run_setting_problems(cfg: DictConfig) -> list[str]:
    """The seed, the run's length, its logging and validation cadence, and torch's process-wide settings,
    which numpy, Lightning and torch would reject with a traceback (``check_val_every_n_epoch=0``: a
    division by zero after the first epoch) or take silently (``log_every_n_steps=-1`` logs every step)."""
    problems = []
    seed = cfg.get("seed")
    if not (isinstance(seed, int) and 0 <= seed < 2**32):
        problems.append(
            f"seed={seed!r} is invalid: it must be an integer from 0 to {2**32 - 1} (numpy's range)."
        )
    for key in ("max_epochs", "max_steps"):
        value = cfg.trainer.get(key)
        if value is not None and not (isinstance(value, int) and value >= -1):
            problems.append(
                f"trainer.{key}={value!r} is invalid: it must be an integer >= 0, or -1 for no limit."
            )
    log_every = cfg.trainer.get("log_every_n_steps")
    if log_every is not None and not (isinstance(log_every, int) and log_every >= 0):
        problems.append(
            f"trainer.log_every_n_steps={log_every!r} is invalid: it must be an integer >= 1, or 0 for no "
            "per-step values (train/loss, train/g_norm) in the loggers."
        )
    every = cfg.trainer.get("check_val_every_n_epoch")
    if every is not None and not (isinstance(every, int) and every >= 1):
        problems.append(
            f"trainer.check_val_every_n_epoch={every!r} is invalid: it must be an integer >= 1 (validation "
            "picks the checkpoint that is tested)."
        )
    return problems + torch_setting_problems(cfg)


def _device_problems(trainer: DictConfig) -> list[str]:
    """A GPU asked for where torch sees none (or fewer than asked), said before any data is read."""
    accelerator, devices = str(trainer.get("accelerator")), trainer.get("devices")
    if accelerator not in ("gpu", "cuda"):
        return []
    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU only"
    if found == 0:
        return [
            f"trainer.accelerator={accelerator} asks for a CUDA GPU, but torch sees none (torch "
            f"{torch.__version__}, built for {build}). Use trainer=cpu, or trainer.accelerator=auto to take "
            "a GPU where there is one; on a GPU machine, check nvidia-smi and CUDA_VISIBLE_DEVICES."
        ]
    if isinstance(devices, int) and devices > found:
        return [
            f"trainer.devices={devices} asks for more GPUs than torch sees ({found}). Use "
            f"trainer.devices={found} or fewer, or trainer.devices=-1 for all of them."
        ]
    return []


def torch_setting_problems(cfg: DictConfig) -> list[str]:
    """``threads`` and ``float32_matmul_precision`` (``src.train`` and ``src.eval``), which torch would
    reject with a traceback or, for an unknown precision, only warn about."""
    problems = []
    threads = cfg.get("threads")
    if threads is not None and (isinstance(threads, bool) or not (isinstance(threads, int) and threads >= 1)):
        problems.append(
            f"threads={threads!r} is invalid: it must be the number of CPU threads torch uses (an integer "
            ">= 1), or null for torch's default."
        )
    precision = cfg.get("float32_matmul_precision")
    if precision is not None and precision not in ("highest", "high", "medium"):
        problems.append(
            f"float32_matmul_precision={precision!r} is invalid: it must be 'highest', 'high' (TF32 on "
            "GPUs that have it), 'medium' or null for torch's default."
        )
    return problems
