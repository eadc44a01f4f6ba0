"""Every command in a fenced ``bash`` block of the README and the docs keeps working.

Each is checked as cheaply as says something: ``python -m src.train`` / ``src.eval`` overrides compose
(every value of a sweep in turn, as the entry point checks them before running), ``--cfg`` and
``--help`` run for real, ``src.report`` / ``src.claims`` accept their arguments, ``make`` targets
dry-run with ``make -n``, ``wandb`` subcommands exist. One training command runs for real, on digits.
A command of a kind this file does not know fails the test, so a new one gets a check."""

import importlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from src.analysis.claims import main as claims_main
from src.analysis.report import main as report_main
from src.runtime.composition import check_command_line
from src.runtime.config import register_configs
from tests.conftest import REPO
from tests.helpers.cli import run_main

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
# Install commands: they change the environment, so they are not run; what they name is checked below.
INSTALLS = ("python3 -m venv", ".venv/bin/pip install")


def documented_commands() -> list[str]:
    """The commands of every ``bash`` block: continuation lines joined, ``&&`` chains split, comments
    and ``<placeholders>`` (to be filled in by the reader) replaced by a plain word."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"^```bash\n(.*?)^```", page.read_text(), flags=re.S | re.M):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(re.sub(r"<[^<>]+>", "x", line), comments=True)
                command = " ".join(shlex.quote(w) for w in words)
                commands += [c.strip() for c in command.split(" && ") if c.strip()]
    return sorted(set(commands))


COMMANDS = documented_commands()


def kind(command: str) -> str:
    words = shlex.split(command)
    if command.startswith(INSTALLS):
        return "install"
    if words[:2] == ["python", "-m"] and words[2] in ("src.train", "src.eval", "src.score", "src.export"):
        return "hydra"
    if words[:2] == ["python", "-m"] and words[2] in ("src.report", "src.claims"):
        return "analysis"
    if words[:2] == ["python", "-m"] and words[2].startswith(("studies.", "benchmarks.")):
        return "study"  # an argparse main: its arguments parse
    return {"make": "make", "wandb": "wandb", "touch": "install"}.get(words[0], "unknown")


def test_the_docs_show_commands_of_every_kind() -> None:
    kinds = {kind(c) for c in COMMANDS}
    assert kinds == {"install", "hydra", "analysis", "make", "wandb", "study"}, [
        c for c in COMMANDS if kind(c) == "unknown"
    ]


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c) == "hydra"])
def test_a_documented_training_or_eval_command_composes(command: str, capfd) -> None:
    name, args = shlex.split(command)[2].removeprefix("src."), shlex.split(command)[3:]
    if any(a in ("--cfg", "--help") for a in args):  # cheap: Hydra prints and exits
        assert run_main(name, *args) == 0
        assert capfd.readouterr().out
        return
    register_configs()
    check_command_line(name, args)  # exits 2, naming the setting, where an override does not compose


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c) == "analysis"])
def test_a_documented_report_command_takes_its_arguments(
    command: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)  # its sweep does not exist here: it must get past parsing to say so
    words = shlex.split(command)
    main = report_main if words[2] == "src.report" else claims_main
    assert main(words[3:]) in (0, 2)
    err = capsys.readouterr().err
    assert "unrecognized arguments" not in err and "usage:" not in err, err


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c) == "make"])
def test_a_documented_make_command_dry_runs(command: str) -> None:
    proc = subprocess.run([*shlex.split(command)[:1], "-n", *shlex.split(command)[1:]], cwd=REPO,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c) == "wandb"])
def test_a_documented_wandb_subcommand_exists(command: str) -> None:
    wandb_cli = Path(sys.executable).parent / "wandb"
    proc = subprocess.run([str(wandb_cli), shlex.split(command)[1], "--help"], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_the_install_commands_name_what_the_project_has() -> None:
    installs = " ".join(c for c in COMMANDS if kind(c) == "install")
    pyproject, makefile = (REPO / "pyproject.toml").read_text(), (REPO / "Makefile").read_text()
    for extra in re.findall(r"\.\[(\w+)\]", installs):
        assert f"\n{extra} = [" in pyproject
    for stamp in re.findall(r"touch (\S+)", installs):  # the file make's targets take as "installed"
        venv, name = stamp.split("/", 1)
        assert f"VENV := {venv}" in makefile and f"STAMP := $(VENV)/{name}" in makefile


def test_the_first_documented_offline_run_trains(tmp_path: Path) -> None:
    """For real, shortened to one epoch: the README's first offline training command."""
    command = next(
        c
        for c in COMMANDS
        if c.startswith("python -m src.train model=") and "data=digits" in c and "," not in c
    )
    args = [*shlex.split(command)[3:], "trainer.max_epochs=1", "logger=csv", f"hydra.run.dir={tmp_path}"]
    assert run_main("train", *args) == 0
    assert json.loads((tmp_path / "metrics.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("command", [c for c in COMMANDS if kind(c) == "study"])
def test_a_documented_study_command_takes_its_arguments(command: str) -> None:
    words = shlex.split(command)
    module = importlib.import_module(words[2])
    with pytest.raises(SystemExit) as parsed:
        module.main([*words[3:], "--help"])
    assert parsed.value.code == 0
