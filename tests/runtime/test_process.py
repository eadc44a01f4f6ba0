import ctypes.util
import os

import torch

from src.runtime import process
from src.runtime.process import NVML_CHECK, skip_unloadable_nvml_check, usable_cpus
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


def test_usable_cpus_is_the_fewest_of_affinity_cgroup_quota_and_slurm(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")  # no quota
    assert usable_cpus(str(cpu_max)) == 4 and usable_cpus(str(tmp_path / "none")) == 4
    cpu_max.write_text("250000 100000\n")  # a container's --cpus=2.5
    assert usable_cpus(str(cpu_max)) == 3
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert usable_cpus(str(cpu_max)) == 2


def test_a_run_without_threads_set_uses_no_more_threads_than_its_cpus(monkeypatch, cfg_train) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(process, "usable_cpus", lambda: 1)
    with process.torch_settings(cfg_train):  # threads: null
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
