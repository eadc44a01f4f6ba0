"""Other packages' private APIs: each use in ``src/private_api.py`` still works on the installed versions,
and no other module of ``src`` reaches one (read from the syntax tree)."""

import ast
import builtins
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.loggers import WandbLogger

from src import private_api
from tests.conftest import REPO

SRC = REPO / "src"
MOVED = "{} no longer has {}: the installed version changed it; update src/private_api.py."


def _require(owner: object, attribute: str) -> None:
    assert hasattr(owner, attribute), MOVED.format(type(owner).__qualname__, attribute)


def test_the_sigterm_flag_is_lightnings_own() -> None:
    trainer = Trainer(logger=False, enable_checkpointing=False)
    _require(trainer, "_signal_connector")
    private_api.raise_sigterm_flag(trainer)
    assert trainer.received_sigterm is True
    private_api.raise_sigterm_flag(trainer, False)
    assert trainer.received_sigterm is False


def test_a_checkpoint_saved_without_the_barrier_is_a_whole_checkpoint(tmp_path: Path) -> None:
    trainer = Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.fit(BoringModel())
    _require(trainer, "_checkpoint_connector")
    private_api.save_checkpoint_without_barrier(trainer, tmp_path / "a.ckpt")
    trainer.save_checkpoint(tmp_path / "b.ckpt")
    ours, theirs = (torch.load(tmp_path / n, weights_only=False) for n in ("a.ckpt", "b.ckpt"))
    assert ours.keys() == theirs.keys() and ours["global_step"] == theirs["global_step"] == 2
    assert all(torch.equal(ours["state_dict"][k], v) for k, v in theirs["state_dict"].items())


def test_wandb_is_started_without_the_anonymous_argument(tmp_path: Path) -> None:
    logger = WandbLogger(save_dir=str(tmp_path), offline=True)
    _require(logger, "_wandb_init")
    assert logger._wandb_init["anonymous"] is None  # what Lightning passes, and wandb warns about
    private_api.drop_wandb_anonymous(logger)
    assert "anonymous" not in logger._wandb_init


def _own_class_names() -> set[str]:
    names = {n for n in dir(builtins) if isinstance(getattr(builtins, n), type)} | {"NamedTuple", "object"}
    for path in SRC.rglob("*.py"):
        names |= {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)}
    return names


def _base_name(base: ast.expr) -> str:
    return base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")


def private_uses(source: str, where: str, own: set[str]) -> list[str]:
    """Where ``source`` (of file ``where``) reaches another package's private name: ``x._name`` on
    anything but ``self`` or ``cls`` of a class whose bases are all this project's (or builtins), and
    ``from pkg import _name``."""
    found = []

    class Visitor(ast.NodeVisitor):
        def __init__(self) -> None:
            self.classes: list[ast.ClassDef] = []

        def visit_ClassDef(self, node: ast.ClassDef) -> None:
            self.classes.append(node)
            self.generic_visit(node)
            self.classes.pop()

        def visit_Attribute(self, node: ast.Attribute) -> None:
            name = node.attr
            if name.startswith("_") and not name.endswith("__"):
                on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
                own_class = self.classes and all(_base_name(b) in own for b in self.classes[-1].bases)
                if not (on_self and own_class):
                    found.append(f"{where}:{node.lineno} .{name}")
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if not (node.module or "").startswith("src"):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        found.append(f"{where}:{node.lineno} import {alias.name}")

    Visitor().visit(ast.parse(source))
    return found


def test_no_other_module_of_src_reaches_a_private_attribute_of_another_package() -> None:
    own = _own_class_names()
    files = [p for p in sorted(SRC.rglob("*.py")) if p.name != "private_api.py"]
    assert len(files) > 20
    uses = [use for p in files for use in private_uses(p.read_text(), str(p.relative_to(REPO)), own)]
    assert uses == []


@pytest.mark.parametrize(
    "code,flagged",
    [
        ("trainer._signal_connector.received_sigterm = True", True),
        ("from torchvision.datasets.mnist import _x", True),
        ("class A(Callback):\n    def f(self):\n        return self._told", True),
        ("class A:\n    def f(self):\n        return self._told", False),
        ("class A(ValueError):\n    def f(self):\n        return self._told", False),
        ("x.__class__", False),
    ],
)
def test_the_check_tells_private_uses_from_own_attributes(code: str, flagged: bool) -> None:
    assert bool(private_uses(code, "probe.py", _own_class_names() | {"A"})) is flagged
