"""What the two entry points, ``src.train`` and ``src.eval``, share: the notices they silence, torch's
process-wide settings for one job, and how they stop on an expected failure."""

import ctypes
import logging
import math
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig


class _DropLightningTips(logging.Filter):
    """Lightning 2.6 advertises its cloud logger ("💡 Tip: ... litlogger") at every ``Trainer``, and says
    on every machine without a TPU that it has none."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(("💡 Tip", "TPU available: False"))


_DROP_TIPS = _DropLightningTips()


def quiet_dependency_notices() -> None:
    """Silence messages a user can do nothing about: Lightning's advertisement, its "no TPU" and torch 2.14's
    deprecation of the ``LeafSpec`` that Lightning 2.6 still builds, in every run; and, with
    ``trainer.precision=bf16-mixed``, the model summary's warning that it sizes the weights at 32 bits,
    which is right (mixed precision keeps them in float32). Called by the entry points, not at import."""
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if _DROP_TIPS not in rank_zero_log.filters:
        rank_zero_log.addFilter(_DROP_TIPS)
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
    warnings.filterwarnings(
        "ignore", r"Precision \S+-mixed is not supported by the model summary", UserWarning
    )
    # A resumed run continues its own CSV history (``ResumableCSVLogger``), which Lightning warns about.
    warnings.filterwarnings("ignore", r"Experiment logs directory .* exists and is not empty", UserWarning)


def stop_on(err: Exception, exit_code: int, logger: logging.Logger) -> None:
    """Report an expected failure in one paragraph: a single run exits with ``exit_code``; in a
    multirun the error goes back to Hydra, which records it and runs the other jobs."""
    logger.error(str(err))
    if HydraConfig.get().mode == RunMode.RUN:
        raise SystemExit(exit_code) from None
    raise err


@contextmanager
def torch_settings(cfg: DictConfig) -> Iterator[None]:
    """The job's process-wide torch settings, ``threads`` and ``float32_matmul_precision``, put back as
    they were afterwards: jobs of a multirun share one process, and a job that leaves them unset gets
    torch's defaults, not the previous job's settings.

    ``threads`` also goes into ``OMP_NUM_THREADS`` for the run: Lightning's DDP launcher sets its own
    count (cores / processes) wherever that variable is unset, and the ranks it starts inherit it. Left
    unset, the count is ``default_threads``."""
    threads, env = torch.get_num_threads(), os.environ.get("OMP_NUM_THREADS")
    precision = torch.get_float32_matmul_precision()
    try:
        if cfg.get("threads") is not None:
            torch.set_num_threads(cfg.threads)
            os.environ["OMP_NUM_THREADS"] = str(cfg.threads)
        else:
            torch.set_num_threads(default_threads(cfg, threads))
        if cfg.get("float32_matmul_precision"):  # "high" allows TF32 on Ampere+ GPUs
            torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
        yield
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = env
        torch.set_float32_matmul_precision(precision)


# A run whose hidden layers' matmuls are this small (batch_size x hidden_dim^2 multiply-adds: a batch of 64
# at width 256, as `make train`) gets one thread. Alone, a second thread saves it a few percent of its
# training time at most; beside another job, the idle OpenMP threads of each spin while they wait for work and
# take the cores the other needs: two such runs at once took 3 to 4 times as long as one alone
# (docs/performance.md, "Several jobs on one machine").
SMALL_MATMUL = 64 * 256 * 256


def default_threads(cfg: DictConfig, torch_count: int) -> int:
    """The thread count of a run that leaves ``threads`` unset: 1 for a small model (``SMALL_MATMUL``),
    else torch's count, at most ``usable_cpus()``. Where the user set ``OMP_NUM_THREADS`` (or a launcher
    did: DDP, joblib), torch's count already follows it and only the CPU cap applies."""
    model, data = cfg.get("model"), cfg.get("data")  # src.eval's config has no model group
    small = model is not None and data is not None and data.batch_size * model.hidden_dim**2 <= SMALL_MATMUL
    if small and "OMP_NUM_THREADS" not in os.environ:
        return 1
    return min(torch_count, usable_cpus())


def usable_cpus(cgroup_cpu_max: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The CPUs this process may use: the fewest of its CPU affinity, its cgroup's CPU quota (a
    container's ``--cpus``) and SLURM's ``SLURM_CPUS_PER_TASK``. torch counts the machine's cores, so a
    job packed onto a shared node would otherwise run more threads than it has CPUs."""
    counts = [len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1]
    try:
        quota, period = Path(cgroup_cpu_max).read_text().split()
        if quota != "max":
            counts.append(max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 quota here
        pass
    if os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        counts.append(max(1, int(os.environ["SLURM_CPUS_PER_TASK"])))
    return min(counts)


NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
NVML_LIBRARY = "libnvidia-ml.so.1"  # the name torch loads


def skip_unloadable_nvml_check(library: str | None = None) -> bool:
    """Unset ``PYTORCH_NVML_BASED_CUDA_CHECK`` (set by ``import lightning``) where NVML cannot be loaded;
    return whether it was unset. ``library`` defaults to ``NVML_LIBRARY``.

    With it on, ``torch.cuda.is_available()`` asks NVML, and on a machine without the NVIDIA driver torch
    tries to load the library at every call, fails, and asks the CUDA runtime all the same. Adam makes
    that call at every ``step()``; there the setting changes no answer, only the cost.
    """
    if os.environ.get(NVML_CHECK) != "1":
        return False
    try:
        ctypes.CDLL(library or NVML_LIBRARY)
    except OSError:
        del os.environ[NVML_CHECK]
        return True
    return False
