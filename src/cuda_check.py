"""Lightning's NVML-based CUDA check, switched off on machines where NVML cannot be loaded.

``import lightning`` sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``: ``torch.cuda.is_available()`` then asks
NVML, the NVIDIA driver's management library, instead of the CUDA runtime, so that a later ``fork``
stays safe. On a machine without the driver, torch tries to load that library at every call, fails,
and asks the CUDA runtime all the same; nothing caches the failure. Torch's Adam makes that call at
every ``step()`` (its graph-capture health check), which then takes 0.18 ms instead of 0.04 on this
CPU; whole training steps were 0.3-0.5 ms faster without the failing load. Where the library cannot
be loaded the setting changes no answer, only the cost, so it goes.
"""

import ctypes
import os

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"
NVML_LIBRARY = "libnvidia-ml.so.1"  # the name torch loads


def skip_unloadable_nvml_check(library: str | None = None) -> bool:
    """Unset ``PYTORCH_NVML_BASED_CUDA_CHECK`` if it is on and ``library`` cannot be loaded.

    Call it after ``lightning`` is imported (which sets the variable). ``library`` defaults to
    ``NVML_LIBRARY``. Returns whether the variable was unset.
    """
    if os.environ.get(NVML_CHECK) != "1":
        return False
    try:
        ctypes.CDLL(library or NVML_LIBRARY)
    except OSError:
        del os.environ[NVML_CHECK]
        return True
    return False
