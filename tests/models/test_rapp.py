"""RaPP's scores (SAP and NAP) against computations written out by hand and with numpy, the NAP
statistics through a checkpoint, and the model settings' bounds."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra.core.global_hydra import GlobalHydra

from src.models import rapp
from src.models.components.autoencoder import AutoEncoder
from src.models.module import AnomalyAutoEncoder
from src.models.settings import SCORES, check_model_settings
from src.runtime.config import ConfigError
from src.train import train
from tests.conftest import as_run, compose_train


def _bn(norm: torch.nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm in eval mode, written out."""
    return (x - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias


def _pathway_by_hand(net: AutoEncoder, x: torch.Tensor) -> list[torch.Tensor]:
    """A one-unit pre-activation residual encoder, layer by layer: x, the input projection, the unit
    (``h + W relu(bn(h))``), the code."""
    enc = net.encoder
    h1 = x @ enc.proj_in.weight.T + enc.proj_in.bias
    unit = enc.blocks[0]
    h2 = h1 + F.relu(_bn(unit.norm, h1)) @ unit.fc.weight.T + unit.fc.bias
    code = F.relu(_bn(enc.norm, h2)) @ enc.proj_out.weight.T + enc.proj_out.bias
    return [x, h1, h2, code]


def _tiny_model() -> AutoEncoder:
    torch.manual_seed(0)
    net = AutoEncoder(3, 2, 4, 1, residual=True, variational=False, block="preact", output="sigmoid")
    for norm in (net.encoder.blocks[0].norm, net.encoder.norm):  # running statistics that matter
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_sap_sums_the_squared_differences_along_the_pathway_computed_by_hand() -> None:
    net = _tiny_model()
    x = torch.rand(5, 3, generator=torch.Generator().manual_seed(1))
    here = _pathway_by_hand(net, x)
    x_hat = torch.sigmoid(net.decoder(here[-1]))
    there = _pathway_by_hand(net, x_hat)
    by_hand = [(a - b).pow(2).sum(1) for a, b in zip(here, there, strict=True)]

    diffs = net.pathway_differences(x)
    assert len(diffs) == 4  # input, input projection, one unit, code
    assert torch.allclose(rapp.layer_errors(diffs), torch.stack(by_hand, 1), atol=1e-5)
    assert torch.allclose(rapp.sap(diffs), sum(by_hand), atol=1e-5)
    assert torch.allclose(rapp.layer_errors(diffs)[:, 0], net.score(x))  # the input space: recon


def test_the_scores_are_recon_sap_and_each_layer_of_the_pathway() -> None:
    net = _tiny_model()
    x = torch.rand(6, 3, generator=torch.Generator().manual_seed(2))
    per_layer = rapp.layer_errors(net.pathway_differences(x))
    out = rapp.scores(net, x, None, nap_from=0)
    assert set(out) == {"recon", "sap", "layer_0", "layer_1", "layer_2", "layer_3"}  # no NAP unfitted
    assert torch.allclose(out["recon"], net.score(x)) and torch.allclose(out["sap"], per_layer.sum(1))
    assert all(torch.equal(out[f"layer_{i}"], per_layer[:, i]) for i in range(4))


def test_a_vae_pathway_ends_in_the_code_mean() -> None:
    torch.manual_seed(0)
    net = AutoEncoder(6, 2, 4, 2, residual=False, variational=True, block="original", output="sigmoid").eval()
    x = torch.rand(3, 6)
    path = net.pathway(x)
    assert [p.shape[1] for p in path] == [6, 4, 4, 4, 2]
    assert torch.equal(path[-1], net.encode(x)[0])


def _nap_by_numpy(train: np.ndarray, test: np.ndarray, rank: int) -> np.ndarray:
    mean = train.mean(0)
    _, s, vt = np.linalg.svd(train - mean, full_matrices=False)
    return ((((test - mean) @ vt[:rank].T) / s[:rank]) ** 2).sum(1)


def test_nap_is_the_whitened_distance_that_numpy_computes() -> None:
    gen = np.random.default_rng(0)
    train = gen.normal(size=(50, 6)) * np.array([5.0, 2.0, 1.0, 0.5, 0.2, 0.1]) + 3.0
    test = gen.normal(size=(7, 6))
    stats = rapp.fit_nap(torch.from_numpy(train).float())
    assert stats.projection.shape == (6, 6)  # full rank: every direction kept
    # two layers' differences, concatenated by the score as the fit saw them
    diffs = [torch.from_numpy(test[:, :4]).float(), torch.from_numpy(test[:, 4:]).float()]
    expected = _nap_by_numpy(train, test, rank=6)
    assert np.allclose(rapp.nap(diffs, stats).numpy(), expected, rtol=1e-4)
    # whitening: the training rows themselves score their dimension (n - 1 over the SVD's scale) on average
    fitted = rapp.nap([torch.from_numpy(train).float()], stats).numpy()
    assert fitted.mean() == pytest.approx(6 / 50, rel=1e-3)


def test_nap_drops_the_directions_the_normals_do_not_span() -> None:
    """Rank 3 in 8 dimensions (two constant columns, fewer independent directions than columns): the
    guard keeps the 3 real directions; dividing by the others' rounding-noise singular values would
    make any off-subspace difference dominate the score."""
    gen = np.random.default_rng(1)
    basis = gen.normal(size=(3, 8))
    basis[:, :2] = 0  # two constant columns
    train = gen.normal(size=(40, 3)) @ basis + 1.0
    stats = rapp.fit_nap(torch.from_numpy(train).float())
    assert stats.projection.shape == (8, 3)
    test = gen.normal(size=(5, 8))
    scores = rapp.nap([torch.from_numpy(test).float()], stats).numpy()
    assert np.isfinite(scores).all()
    assert np.allclose(scores, _nap_by_numpy(train, test, rank=3), rtol=1e-3)
    # unguarded, the noise directions would blow the scores up by many orders of magnitude (or to inf)
    with np.errstate(divide="ignore"):
        assert _nap_by_numpy(train, test, rank=8).min() > 1e4 * scores.max()


def test_nap_with_fewer_normals_than_dimensions_keeps_the_directions_they_span() -> None:
    gen = np.random.default_rng(2)
    train, test = gen.normal(size=(12, 30)) * np.linspace(3, 0.1, 30), gen.normal(size=(4, 30))
    stats = rapp.fit_nap(torch.from_numpy(train).float())
    assert stats.projection.shape == (30, 11)  # 12 centred rows span 11 directions
    scores = rapp.nap([torch.from_numpy(test).float()], stats).numpy()
    assert np.allclose(scores, _nap_by_numpy(train, test, rank=11), rtol=1e-4)


def test_the_guard_is_relative_to_the_largest_singular_value() -> None:
    # singular values near 1e5, 10 and 0.1: the guard (100 * float32 eps = 1.2e-5 of the largest, 1.2)
    # drops the third, which a guard relative to the second (1.2e-4) would keep
    train = np.random.default_rng(3).normal(size=(100, 3)) * np.array([1e4, 1.0, 1e-2])
    assert rapp.fit_nap(torch.from_numpy(train).float()).projection.shape == (3, 2)


def test_nap_of_identical_rows_keeps_no_direction_and_scores_zero() -> None:
    stats = rapp.fit_nap(torch.ones(10, 4))
    assert stats.projection.shape == (4, 0)
    assert torch.equal(rapp.nap([torch.rand(3, 4)], stats), torch.zeros(3))


@pytest.fixture(scope="module")
def nap_run(tmp_path_factory) -> tuple[Path, dict, dict]:
    out = tmp_path_factory.mktemp("nap")
    cfg = compose_train(["model.score=nap", "model.n_layers=2", "trainer.max_epochs=2"])
    record, objects = train(as_run(cfg, out))
    GlobalHydra.instance().clear()
    return out, record, objects


def test_nap_statistics_come_back_with_the_checkpoint_they_were_validated_with(nap_run) -> None:
    _, record, objects = nap_run
    model = AnomalyAutoEncoder.load_from_checkpoint(record["best_checkpoint"], weights_only=False)
    assert model.nap is not None and model.hparams.score == "nap"
    # the checkpoint's val AUROC again, from its own weights and statistics
    datamodule = objects["datamodule"]
    model.eval()
    scores, labels = zip(*((model(x), y) for x, y in datamodule.val_dataloader()), strict=True)
    metric = model.val_metrics
    metric.update(torch.cat(scores), torch.cat(labels))
    assert metric.compute()["auroc"].item() == pytest.approx(record["val/auroc"], abs=1e-6)
    # and the test AUROC is NAP's, among all the scores the test logged
    assert record["test/auroc"] == record["test/auroc_nap"]
    assert {"test/auroc_recon", "test/auroc_sap", "test/auprc_nap", "test/auroc_layer_4"} <= set(record)
    assert "test/auroc_layer_5" not in record  # 2 units: input, projection, 2 units, code


def test_a_model_without_nap_statistics_refuses_to_score_by_nap() -> None:
    model = AnomalyAutoEncoder(8, n_layers=1, hidden_dim=4, latent_dim=2, score="nap")
    with pytest.raises(RuntimeError, match="NAP's statistics are not fitted"):
        model(torch.rand(2, 8))
    assert "nap" not in model.scores(torch.rand(2, 8))


# (setting, smallest valid value, largest invalid value below it, what the error says is allowed)
BOUNDS = [
    ("n_layers", 0, -1, "an integer >= 0 (0 = projections only)"),
    ("hidden_dim", 1, 0, "an integer >= 1"),
    ("latent_dim", 1, 0, "an integer >= 1"),
    ("beta", 0.0, -1e-9, "a number >= 0"),
    ("weight_decay", 0.0, -1e-9, "a number >= 0"),
]
VALID = dict(n_layers=2, hidden_dim=8, latent_dim=4, block="preact", beta=1.0, lr=1e-3, weight_decay=0.0)


@pytest.mark.parametrize("name,ok,bad,allowed", BOUNDS)
def test_each_model_setting_is_checked_at_its_bound(name: str, ok, bad, allowed: str) -> None:
    check_model_settings(**VALID | {name: ok})
    with pytest.raises(ConfigError) as err:
        check_model_settings(**VALID | {name: bad})
    assert str(err.value) == f"model.{name}={bad!r} is invalid: it must be {allowed}."


def test_every_score_and_a_code_as_wide_as_the_input_pass() -> None:
    for score in SCORES:
        check_model_settings(**VALID | {"score": score})
    check_model_settings(**VALID | {"latent_dim": 8, "input_dim": 8})


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"lr": 0.0}, "model.lr=0.0 is invalid: it must be a number > 0."),
        ({"block": "wide"}, "model.block='wide' is invalid: it must be 'preact' or 'original'."),
        ({"score": "mse"}, "model.score='mse' is invalid: it must be 'recon', 'sap' or 'nap'."),
        (
            {"latent_dim": 9, "input_dim": 8},
            "model.latent_dim=9 is invalid: it must be at most the input size of the data (8).",
        ),
    ],
)
def test_other_model_settings_name_what_is_allowed(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_model_settings(**VALID | changes)
    assert str(err.value) == message


@pytest.mark.parametrize("nap_input", [True, False])
def test_nap_reads_the_input_space_only_when_asked(nap_input: bool) -> None:
    torch.manual_seed(0)
    model = AnomalyAutoEncoder(10, n_layers=1, hidden_dim=6, latent_dim=2, nap_input=nap_input).eval()
    normals, x = torch.rand(40, 10), torch.rand(5, 10)
    model.fit_nap([(normals, None)])
    first = 0 if nap_input else 1
    expected = rapp.fit_nap(torch.cat(model.net.pathway_differences(normals)[first:], dim=1))
    assert model.nap.mean.shape == (10 * nap_input + 6 + 6 + 2,)  # input, projection, unit, code
    assert torch.allclose(model.nap.mean, expected.mean) and torch.allclose(
        model.nap.projection, expected.projection
    )
    diffs = model.net.pathway_differences(x)[first:]
    assert torch.allclose(model.scores(x)["nap"], rapp.nap(diffs, expected))
