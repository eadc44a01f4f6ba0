import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def test_importing_any_src_module_changes_nothing_in_the_process(tmp_path: Path) -> None:
    """Importing a ``src`` module has no side effects. Whatever ``src`` imports from other
    packages is imported first, so only what ``src``'s own code does at import shows."""
    probe = REPO / "tests" / "import_probe.py"
    proc = subprocess.run([sys.executable, str(probe), str(REPO)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    files = {".".join(p.relative_to(REPO).with_suffix("").parts) for p in (REPO / "src").rglob("*.py")}
    expected = {name.removesuffix(".__init__") for name in files} - {"src"}
    assert set(result["modules"]) == expected
    assert result["changed"] == {}
    assert list(tmp_path.iterdir()) == []  # nothing written where it ran
