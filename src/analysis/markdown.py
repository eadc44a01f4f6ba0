"""Markdown tables for ``report.md`` and ``claims.md``."""

import pandas as pd


def markdown(rows: list[list[str]], header: list[str]) -> str:
    """A Markdown table of text cells, kept as they are given (no number parsing)."""
    return pd.DataFrame(rows, columns=header).to_markdown(index=False, disable_numparse=True)


def key_text(keys) -> str:
    """A table row's settings as text: ``0.5, 2`` (floats to 4 significant digits)."""
    keys = keys if isinstance(keys, tuple) else (keys,)
    return ", ".join(f"{k:.4g}" if isinstance(k, float) else str(k) for k in keys)
