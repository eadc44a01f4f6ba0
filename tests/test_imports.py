import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_importing_any_src_module_changes_nothing_in_the_process(tmp_path: Path) -> None:
    """Importing a ``src`` module has no side effects. Whatever ``src`` imports from other
    packages is imported first, so only what ``src``'s own code does at import shows."""
    probe = REPO / "tests" / "helpers" / "import_probe.py"
    proc = subprocess.run([sys.executable, str(probe), str(REPO)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    files = {".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "src").rglob("*.py")}
    expected = {name.removesuffix(".__init__") for name in files} - {"src"}
    assert set(result["modules"]) == expected
    assert result["changed"] == {}
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran


# On the lent GPU machines' image (PyTorch, Lightning, torchmetrics, torchvision, pandas, matplotlib,
# scikit-learn, joblib; Hydra comes as wheels) these packages are absent
NOT_ON_THE_GPU_IMAGE = ["wandb", "mlxtend", "submitit", "optuna"]


def test_what_the_gpu_check_runs_imports_without_packages_the_gpu_image_lacks() -> None:
    """``benchmarks/gpu_check.sh`` runs ``tests/test_gpu.py``, the bench and ``src.train``; none may import
    W&B or the other packages above at import time (W&B was reached through ``tests.test_eval``)."""
    code = (
        "import sys\n"
        f"for name in {NOT_ON_THE_GPU_IMAGE!r}:\n"
        "    sys.modules[name] = None  # import name: ModuleNotFoundError\n"
        "import tests.test_gpu, benchmarks.train_speed, src.train, src.eval, src.report\n"
        "print('imported')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "imported", proc.stderr[-3000:]
