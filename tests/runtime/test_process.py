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


def test_a_run_without_threads_set_uses_no_more_threads_than_its_cpus(monkeypatch, make_cfg) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(process, "usable_cpus", lambda: 1)
    with process.torch_settings(make_cfg("data.batch_size=512")):  # threads: null, a large model
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_a_small_model_gets_one_thread_and_a_larger_one_its_cpus(monkeypatch, make_cfg) -> None:
    """The boundary is one hidden matmul of ``SMALL_MATMUL`` multiply-adds: batch 64 at width 256."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(process, "usable_cpus", lambda: 3)
    for overrides, expected in [
        (["data.batch_size=64", "model.hidden_dim=256"], 1),  # 64 * 256**2: make train's
        (["data.batch_size=65", "model.hidden_dim=256"], 3),
        (["data.batch_size=256", "model.hidden_dim=128"], 1),  # the same multiply-adds
        (["data.batch_size=32", "model.hidden_dim=512"], 3),  # twice as many
    ]:
        assert process.default_threads(make_cfg(*overrides), torch_count=8) == expected, overrides
    assert process.default_threads(make_cfg("data.batch_size=512"), torch_count=2) == 2


def test_the_users_omp_num_threads_or_threads_beat_the_small_model_rule(monkeypatch, make_cfg) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(process, "usable_cpus", lambda: 4)
    small = make_cfg("data.batch_size=64")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torch's count follows it: keep that count
    assert process.default_threads(small, torch_count=2) == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    with process.torch_settings(make_cfg("data.batch_size=64", "threads=2")):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
