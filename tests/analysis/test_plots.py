import pandas as pd

from src.analysis.plots import setting_line


def _rows(seeds_per_cell: dict[tuple[str, int], int], epochs: int = 30) -> pd.DataFrame:
    rows = [
        {"status": "completed", "model": m, "n_layers": n, "seed": s, "dataset": "digits", "epochs": epochs}
        for (m, n), k in seeds_per_cell.items()
        for s in range(k)
    ]
    return pd.DataFrame(rows)


def test_a_figure_title_names_the_data_the_epochs_and_the_seeds_per_point() -> None:
    three = _rows({("ae", 1): 3, ("ae", 2): 3, ("rae", 1): 3, ("rae", 2): 3})
    assert setting_line(three, ["model", "n_layers"]) == "digits; 30 epochs; 3 seeds, mean ± std"
    one = _rows({("ae", 1): 1, ("rae", 1): 1}, epochs=2)
    assert setting_line(one, ["model", "n_layers"]) == "digits; 2 epochs; 1 seed, no error bars"
    uneven = _rows({("ae", 1): 3, ("rae", 1): 2})  # a job of the sweep failed or is missing
    assert setting_line(uneven, ["model", "n_layers"]) == "digits; 30 epochs; 2-3 seeds, mean ± std"
    assert setting_line(uneven, ["model", "n_layers"], error_bars=False) == "digits; 30 epochs; 2-3 seeds"
