import ctypes.util
import os

import torch

from src.runtime import process
from src.runtime.process import NVML_CHECK, skip_unloadable_nvml_check
from src.train import train

MISSING = "libno-such-nvml.so.1"


def test_an_unloadable_nvml_turns_the_check_off_without_changing_the_answer(monkeypatch) -> None:
    monkeypatch.setenv(NVML_CHECK, "1")  # as ``import lightning`` leaves it
    before = torch.cuda.is_available()
    assert skip_unloadable_nvml_check(MISSING) is True
    assert NVML_CHECK not in os.environ
    assert torch.cuda.is_available() == before


def test_a_loadable_library_or_a_check_already_off_is_left_alone(monkeypatch) -> None:
    monkeypatch.setenv(NVML_CHECK, "1")
    assert skip_unloadable_nvml_check(ctypes.util.find_library("c")) is False
    assert os.environ[NVML_CHECK] == "1"
    monkeypatch.setenv(NVML_CHECK, "0")
    assert skip_unloadable_nvml_check(MISSING) is False
    assert os.environ[NVML_CHECK] == "0"


def test_training_turns_the_check_off_where_nvml_cannot_load(make_cfg, monkeypatch) -> None:
    monkeypatch.setenv(NVML_CHECK, "1")
    monkeypatch.setattr(process, "NVML_LIBRARY", MISSING)
    metrics, _ = train(make_cfg("trainer.max_epochs=1"))
    assert metrics["status"] == "completed" and NVML_CHECK not in os.environ
