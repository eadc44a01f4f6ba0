"""Command lines that Hydra cannot compose stop with exit status 2 and a "did you mean", like every other
setting to fix, instead of Hydra's status 1 (which a failed run also gives)."""

import difflib
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SWEEP_FLAGS = ("-m", "--multirun")


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def _candidates(config_name: str, key: str, others: list[str]) -> list[str]:
    """What ``key`` (``model.n_layrs``, ``modle``) could have meant: the settings beside it in the
    config composed without it, or the config's groups and top-level settings."""
    parent = key.lstrip("+~").rpartition(".")[0]
    try:
        cfg = _compose(config_name, others)
    except Exception:
        return []
    node = OmegaConf.select(cfg, parent) if parent else cfg
    names = list(node.keys()) if isinstance(node, DictConfig) else []
    return [f"{parent}.{n}" if parent else str(n) for n in names]


def did_you_mean(word: str, options: list[str]) -> str:
    """`` Did you mean 'model.n_layers'?`` for ``model.n_layrs``, matching the last dotted part only."""
    if word in options:
        return ""
    last = {option.rpartition(".")[2]: option for option in options}
    close = difflib.get_close_matches(word.rpartition(".")[2], list(last), n=2, cutoff=0.7)
    return f" Did you mean {' or '.join(repr(last[c]) for c in close)}?" if close else ""


def _explain(config_name: str, overrides: list[str]) -> str:
    """Which of ``overrides`` (that do not compose together) is wrong, why, and what was perhaps meant."""
    for i, override in enumerate(overrides):
        others = overrides[:i] + overrides[i + 1 :]
        try:
            _compose(config_name, others)
        except Exception:
            continue  # the culprit is among the others
        try:
            _compose(config_name, overrides)
        except MissingConfigException as err:  # an unknown option of a group: model=rvea
            option = (err.missing_cfg_file or "").rpartition("/")[2]
            message = str(err).split("Config search path")[0]  # the options, not where Hydra looked
            return f"{override}: {message}{did_you_mean(option, list(err.options or []))}"
        except Exception as err:  # an unknown key, or a value of the wrong type
            key = override.partition("=")[0]
            cause = f" ({err.__cause__})" if err.__cause__ else ""
            hint = did_you_mean(key.lstrip("+~"), _candidates(config_name, key, others))
            return f"{override}: {err}{cause}{hint}"
    try:
        _compose(config_name, overrides)
    except Exception as err:
        return str(err)
    return "unknown"


def check_command_line(config_name: str, argv: list[str]) -> None:
    """Compose ``argv``'s overrides as Hydra is about to, each value of a sweep among them in turn; where
    they do not compose, print what is wrong in one paragraph and exit with status 2. A command line with
    other Hydra flags (``--cfg``, ``--help``, ...) is left to Hydra."""
    args = [a for a in argv if a not in SWEEP_FLAGS]
    if any(a.startswith("-") for a in args):
        return
    try:
        parsed = OverridesParser.create().parse_overrides(args)
    except Exception as err:  # Hydra's own syntax error names the override
        _stop(str(err))
    choices = []
    for o in parsed:
        key = o.input_line.partition("=")[0]
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        choices.append([f"{key}={v}" for v in values])
    first = [values[0] for values in choices]
    combos = [first] + [first[:i] + [v] + first[i + 1 :] for i, vs in enumerate(choices) for v in vs[1:]]
    for combo in combos:
        try:
            _compose(config_name, combo)
        except Exception:
            _stop(_explain(config_name, combo))


def _stop(problem: str) -> None:
    print(f"Invalid command line, nothing was run: {' '.join(problem.split())}", file=sys.stderr)
    raise SystemExit(2)
