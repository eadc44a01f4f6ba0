"""Export a trained model as a standalone detector:
``python -m src.export ckpt_path=<run or .ckpt> format=onnx|torchscript``.

The exported model takes raw samples, ``x`` of shape ``(batch, D)`` float32 (pixels in [0, 1] or a
table's raw features: the standardisation is inside it), and returns ``score``, ``(batch,)``: the run's
``model.score``. Beside it, ``detector.json`` says what a sample is (kind, shape, feature names), which
score it is, and the thresholds stored for the checkpoint (``src.score threshold=...``): a sample is an
anomaly when its score is above one.
"""

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from src.errors import ConfigError, UsageError
from src.models import thresholds
from src.runtime.checkpoints import find_checkpoint, load_model, read_checkpoint
from src.runtime.composition import check_command_line
from src.runtime.process import quiet_dependency_notices, stop_on
from src.runtime.records import write_json_atomic
from src.score import input_description

log = logging.getLogger(__name__)

FILES = {"onnx": "detector.onnx", "torchscript": "detector.pt"}


def export(cfg: DictConfig) -> dict[str, Any]:
    """Write the detector of ``cfg.ckpt_path`` in ``cfg.format`` and its ``detector.json``."""
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ConfigError("ckpt_path is not set: `python -m src.export ckpt_path=<run directory or .ckpt>`.")
    if cfg.format not in FILES:
        raise ConfigError(f"format={cfg.format!r} is invalid: it must be one of {list(FILES)}.")
    checkpoint = find_checkpoint(str(cfg.ckpt_path))
    model = load_model(checkpoint)
    inputs = input_description(read_checkpoint(checkpoint))
    if model.hparams.score == "nap" and model.nap is None:
        raise ConfigError(f"ckpt_path={checkpoint} scores by NAP but holds no NAP statistics to export.")
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / FILES[cfg.format]
    example = torch.zeros(2, model.hparams.input_dim)  # 2: BatchNorm layers trace as in eval mode either way
    tmp = path.with_name(f".{path.name}.tmp")
    if cfg.format == "onnx":
        try:
            import onnxscript  # noqa: F401  (torch's ONNX exporter needs it)
        except ImportError as err:
            raise ConfigError(
                "format=onnx needs the onnx and onnxscript packages: pip install -e '.[export]'."
            ) from err
        logging.getLogger("onnx_ir").setLevel(logging.WARNING)  # its graph passes log each step at INFO
        batch = torch.export.Dim("batch")
        model.to_onnx(
            tmp, example, dynamo=True, input_names=["x"], output_names=["score"],
            dynamic_shapes={"x": {0: batch}}, verbose=False,
        )  # fmt: skip
    else:
        torch.jit.save(model.to_torchscript(method="trace", example_inputs=example), tmp)
    tmp.replace(path)  # whole or not at all
    record = {
        "checkpoint": str(checkpoint.resolve()),
        "format": cfg.format,
        "file": str(path),
        "input": {"name": "x", "dtype": "float32", **inputs, "dim": model.hparams.input_dim},
        "output": {"name": "score", "score": model.hparams.score, "anomaly_if": "score > threshold"},
        "thresholds": thresholds.stored(checkpoint),
        "model": dict(model.hparams),
    }
    write_json_atomic(out / "detector.json", record)
    return record


@hydra.main(version_base="1.3", config_path="../conf", config_name="export")
def main(cfg: DictConfig) -> None:
    quiet_dependency_notices()
    try:
        record = export(cfg)
    except UsageError as err:
        stop_on(err, exit_code=2, logger=log)
    print(f"Exported the {record['output']['score']} score of {record['checkpoint']} to {record['file']}")


if __name__ == "__main__":
    check_command_line("export", sys.argv[1:])
    main()
