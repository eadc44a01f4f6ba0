"""``studies/rapp_variants.py`` on a real one-job sweep: its variants are scored with the product's own
math (its NAP over all layers and its reconstruction error are the job's test figures)."""

from pathlib import Path

import pandas as pd
import pytest
from hydra.core.global_hydra import GlobalHydra

from src.train import train
from studies import rapp_variants
from tests.conftest import as_run, compose_train


def test_rapp_variants_scores_every_variant_on_val_and_test(tmp_path: Path, capsys) -> None:
    job = tmp_path / "sweep" / "0"
    record, _ = train(as_run(compose_train(["model=ae", "model.n_layers=1", "trainer.max_epochs=2"]), job))
    GlobalHydra.instance().clear()
    rapp_variants.main([str(tmp_path / "sweep")])
    df = pd.read_csv(tmp_path / "sweep" / "rapp_variants.csv")
    variants = 1 + 3 + 3 * len(rapp_variants.GUARDS)  # recon; SAP and NAP over 3 layer sets, NAP per guard
    assert len(df) == 2 * variants and set(df.split) == {"val", "test"}
    test = df[df.split == "test"].set_index(["score", "variant"]).auroc
    assert test["recon", "input"] == pytest.approx(record["test/auroc_recon"], abs=1e-6)
    assert test["NAP", "all"] == pytest.approx(record["test/auroc_nap"], abs=1e-6)
    assert test["SAP", "all"] == pytest.approx(record["test/auroc_sap"], abs=1e-6)
    assert "NAP, chosen on val" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="holds no completed job"):
        rapp_variants.main([str(tmp_path / "empty")])
