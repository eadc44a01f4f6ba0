"""The study's math, each against an independent computation: the KL term against
``torch.distributions``, the reparameterisation's moments, the residual flag in every unit, ``beta`` from
the config to the loss, and each ``model=`` config to the variant it names."""

import hydra
import lightning as L
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from src.models.components.autoencoder import AutoEncoder
from src.models.components.backbone import ResidualMLP
from src.models.components.loss import autoencoder_loss, gaussian_kl, reconstruction_error
from src.models.module import AnomalyAutoEncoder
from tests.conftest import compose_train


def test_the_kl_term_is_torch_distributions_kl_at_random_means_and_variances() -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(64, 8, generator=gen) * 2
    logvar = torch.randn(64, 8, generator=gen) * 1.5  # variances from about 0.05 to 20
    prior = Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), prior).sum(dim=1)
    assert torch.allclose(gaussian_kl(mu, logvar), expected, rtol=1e-5, atol=1e-5)


def test_the_reconstruction_error_is_the_squared_distance_per_sample() -> None:
    gen = torch.Generator().manual_seed(1)
    x, x_hat = torch.rand(16, 10, generator=gen), torch.rand(16, 10, generator=gen)
    assert torch.allclose(reconstruction_error(x_hat, x), torch.cdist(x_hat, x).diagonal() ** 2, atol=1e-5)


def test_the_vae_loss_is_the_batch_mean_of_recon_plus_beta_kl() -> None:
    gen = torch.Generator().manual_seed(2)
    x, x_hat = torch.rand(8, 6, generator=gen), torch.rand(8, 6, generator=gen)
    mu, logvar = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    per_sample = ((x - x_hat) ** 2).sum(1) + 0.3 * gaussian_kl(mu, logvar)
    assert autoencoder_loss(x, x_hat, mu, logvar, beta=0.3)["loss"].item() == pytest.approx(
        per_sample.mean().item(), rel=1e-6
    )


def test_the_reparameterised_sample_has_mean_mu_and_standard_deviation_sigma() -> None:
    torch.manual_seed(3)
    mu = torch.tensor([[-2.0, 0.0, 3.0]]).expand(200_000, 3)
    logvar = torch.tensor([[0.0, -2.0, 1.5]]).expand(200_000, 3)
    z = AutoEncoder.reparameterize(mu, logvar)
    assert torch.allclose(z.mean(0), mu[0], atol=0.02)
    assert torch.allclose(z.std(0), torch.exp(0.5 * logvar[0]), rtol=0.01)


def test_a_vae_samples_its_latent_in_training_while_its_score_is_deterministic() -> None:
    torch.manual_seed(4)
    model = AutoEncoder(
        20, 4, 16, 2, residual=True, variational=True, block="preact", output="sigmoid"
    ).train()
    x = torch.rand(7, 20)
    assert not torch.equal(model(x).x_hat, model(x).x_hat)  # a new eps each forward
    model.eval()
    assert torch.equal(model.score(x), model.score(x))
    assert not model.score(x).requires_grad  # scoring builds no graph
    mu, _ = model.encode(x)
    assert torch.allclose(model.score(x), reconstruction_error(model.decode(mu), x))


@pytest.mark.parametrize("block", ["preact", "original"])
def test_the_residual_flag_reaches_every_unit_and_changes_the_output(block: str) -> None:
    torch.manual_seed(5)
    plain = AutoEncoder(12, 3, 8, 3, residual=False, variational=False, block=block, output="sigmoid").eval()
    resid = AutoEncoder(12, 3, 8, 3, residual=True, variational=False, block=block, output="sigmoid").eval()
    resid.load_state_dict(plain.state_dict())  # the same weights: only the skips differ
    for model, flag in ((plain, False), (resid, True)):
        units = [*model.encoder.blocks, *model.decoder.blocks]
        assert len(units) == 6 and all(unit.residual is flag for unit in units)
    x = torch.rand(5, 12)
    assert not torch.allclose(plain.score(x), resid.score(x))
    # one unit's skip alone changes a side's output: each unit honours its own flag
    side = ResidualMLP(4, 2, 8, n_layers=2, residual=False, block=block).eval()
    before = side(torch.rand(3, 4, generator=torch.Generator().manual_seed(6)))
    side.blocks[1].residual = True
    assert not torch.allclose(side(torch.rand(3, 4, generator=torch.Generator().manual_seed(6))), before)


@pytest.mark.parametrize(
    ("name", "residual", "variational", "block"),
    [
        ("ae", False, False, "preact"),
        ("rae", True, False, "preact"),
        ("vae", False, True, "preact"),
        ("rvae", True, True, "preact"),
        ("rvae_original", True, True, "original"),
    ],
)
def test_each_model_config_builds_the_variant_it_names(
    name: str, residual: bool, variational: bool, block: str
) -> None:
    cfg = compose_train([f"model={name}"])
    model = hydra.utils.instantiate(cfg.model, input_dim=64)
    assert (model.hparams.residual, model.hparams.variational, model.hparams.block) == (
        residual,
        variational,
        block,
    )
    units = [*model.net.encoder.blocks, *model.net.decoder.blocks]
    assert units and all(unit.residual is residual for unit in units)
    assert model.net.variational is variational
    out = model.net(torch.rand(4, 64))
    assert (out.mu is not None) is variational


def _training_loss(model: AnomalyAutoEncoder, x: torch.Tensor) -> tuple[float, float]:
    model.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    torch.manual_seed(7)  # the same eps for every model
    loss = model.training_step((x, torch.zeros(len(x))), 0)
    return loss.item(), model.step_losses["train/kl"].item()


def test_model_beta_from_the_config_weights_the_kl_term_of_the_training_loss() -> None:
    x = torch.rand(16, 64, generator=torch.Generator().manual_seed(8))
    one = hydra.utils.instantiate(compose_train(["model=vae", "model.beta=1.0"]).model, input_dim=64)
    four = hydra.utils.instantiate(compose_train(["model=vae", "model.beta=4.0"]).model, input_dim=64)
    four.load_state_dict(one.state_dict())
    loss_one, kl = _training_loss(one, x)
    loss_four, kl_four = _training_loss(four, x)
    assert kl == pytest.approx(kl_four) and kl > 0
    assert loss_four - loss_one == pytest.approx(3.0 * kl, rel=1e-4)
