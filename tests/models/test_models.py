import hydra
import lightning as L
import pytest
import torch
from lightning.pytorch.utilities.model_summary import ModelSummary

from src.models.components.autoencoder import AutoEncoder
from src.models.components.backbone import OriginalBlock, PreActBlock, ResidualMLP
from src.models.components.loss import autoencoder_loss, gaussian_kl, reconstruction_error
from src.models.module import AnomalyAutoEncoder
from tests.conftest import compose_train

VARIANTS = {  # name: (residual, variational)
    "ae": (False, False),
    "rae": (True, False),
    "vae": (False, True),
    "rvae": (True, True),
}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("block", ["preact", "original"])
@pytest.mark.parametrize("n_layers", range(11))
@pytest.mark.parametrize("name", VARIANTS)
def test_shapes_for_every_depth(name: str, n_layers: int, block: str) -> None:
    residual, variational = VARIANTS[name]
    model = AutoEncoder(
        64,
        latent_dim=8,
        hidden_dim=32,
        n_layers=n_layers,
        residual=residual,
        variational=variational,
        block=block,
        output="sigmoid",
    )
    x = torch.rand(5, 64)
    out = model(x)
    assert out.x_hat.shape == (5, 64)
    assert ((out.x_hat > 0) & (out.x_hat < 1)).all()
    assert (out.mu is None) == (out.logvar is None) == (not variational)
    if variational:
        assert out.mu.shape == out.logvar.shape == (5, 8)
    assert model.score(x).shape == (5,)
    # symmetric: n_layers hidden units per side, 2 * n_layers in all
    assert len(model.encoder.blocks) == len(model.decoder.blocks) == n_layers


@pytest.mark.parametrize("block", ["preact", "original"])
@pytest.mark.parametrize("n_layers", [0, 3, 20])
def test_residual_and_plain_variants_hold_the_same_parameters(n_layers: int, block: str) -> None:
    for variational in (False, True):
        plain = AutoEncoder(
            784, 16, 64, n_layers, residual=False, variational=variational, block=block, output="sigmoid"
        )
        resid = AutoEncoder(
            784, 16, 64, n_layers, residual=True, variational=variational, block=block, output="sigmoid"
        )
        assert n_params(plain) == n_params(resid)
        assert [n for n, _ in plain.named_parameters()] == [n for n, _ in resid.named_parameters()]


def test_preact_and_original_units_hold_the_same_parameters() -> None:
    a = AutoEncoder(784, 16, 64, 5, residual=True, variational=False, block="preact", output="sigmoid")
    b = AutoEncoder(784, 16, 64, 5, residual=True, variational=False, block="original", output="sigmoid")
    assert n_params(a) == n_params(b)


@pytest.mark.parametrize("residual", [False, True])
def test_a_stack_puts_its_own_norm_and_relu_where_its_unit_type_needs_them(residual: bool) -> None:
    """Pre-activation: ``BatchNorm -> ReLU`` after the last unit, before the output projection;
    original: after the input projection, before the first unit."""
    torch.manual_seed(10)
    x = torch.randn(16, 5)
    for block in ("preact", "original"):
        net = ResidualMLP(5, 3, 8, n_layers=2, residual=residual, block=block).eval()
        torch.nn.init.normal_(net.norm.weight)
        net.norm.running_mean.normal_()
        h = net.proj_in(x)
        if block == "original":
            h = torch.relu(net.norm(h))
        for unit in net.blocks:
            h = unit(h)
        if block == "preact":
            h = torch.relu(net.norm(h))
        assert torch.allclose(net(x), net.proj_out(h), atol=1e-6), block


def test_each_unit_holds_one_linear_layer() -> None:
    net = ResidualMLP(10, 3, 16, n_layers=4, residual=True, block="preact")
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 + 2  # hidden units plus input and output projections


def _zero_linear(block: torch.nn.Module) -> None:
    torch.nn.init.zeros_(block.fc.weight)
    torch.nn.init.zeros_(block.fc.bias)


def test_preact_residual_block_at_zero_weights_is_the_identity() -> None:
    block = PreActBlock(8, residual=True)
    _zero_linear(block)
    x = torch.randn(6, 8)
    for mode in (block.train, block.eval):
        mode()
        assert torch.equal(block(x), x)
    plain = PreActBlock(8, residual=False)
    _zero_linear(plain)
    assert torch.equal(plain(x), torch.zeros_like(x))


def test_original_residual_block_at_zero_weights_passes_the_rectified_input() -> None:
    block = OriginalBlock(8, residual=True).eval()
    _zero_linear(block)
    x = torch.randn(6, 8)
    assert torch.allclose(block(x), torch.relu(x))


@pytest.mark.parametrize("residual", [False, True])
def test_each_unit_computes_he_et_al_s_formula(residual: bool) -> None:
    """(b) pre-activation ``x + W relu(bn(x))`` and (a) original ``relu(x + bn(W x))``, skip or not, with
    random weights and BatchNorm statistics, in both modes."""
    torch.manual_seed(9)
    x = torch.randn(16, 4)
    skip = x if residual else torch.zeros_like(x)
    for block, formula in (
        (PreActBlock(4, residual=residual), lambda b: skip + b.fc(torch.relu(b.norm(x)))),
        (OriginalBlock(4, residual=residual), lambda b: torch.relu(skip + b.norm(b.fc(x)))),
    ):
        block.norm.running_mean.normal_()
        block.norm.running_var.uniform_(0.5, 2.0)
        torch.nn.init.normal_(block.norm.weight)
        for mode in (block.eval, block.train):
            mode()
            assert torch.allclose(block(x), formula(block), atol=1e-6)


def test_kl_is_zero_at_the_prior_and_positive_elsewhere() -> None:
    mu, logvar = torch.zeros(4, 3), torch.zeros(4, 3)
    assert torch.allclose(gaussian_kl(mu, logvar), torch.zeros(4))
    assert (gaussian_kl(mu + 1, logvar) > 0).all()
    # KL(N(1, 1) || N(0, 1)) = 1/2 per dimension
    assert torch.allclose(gaussian_kl(mu + 1, logvar), torch.full((4,), 1.5))


def test_loss_sums_over_pixels_and_averages_over_the_batch() -> None:
    x = torch.zeros(2, 5)
    x_hat = torch.tensor([[1.0] * 5, [0.0] * 5])
    assert torch.equal(reconstruction_error(x_hat, x), torch.tensor([5.0, 0.0]))
    losses = autoencoder_loss(x, x_hat, beta=1.0)
    assert losses.keys() == {"loss", "recon"}  # logged as train/loss and train/recon
    assert losses["loss"].item() == losses["recon"].item() == pytest.approx(2.5)
    mu, logvar = torch.ones(2, 3), torch.zeros(2, 3)
    vae = autoencoder_loss(x, x_hat, mu, logvar, beta=2.0)
    assert vae.keys() == {"loss", "recon", "kl"}
    assert vae["kl"].item() == pytest.approx(1.5)
    assert vae["loss"].item() == pytest.approx(2.5 + 2.0 * 1.5)


def test_vae_score_is_deterministic_and_decodes_the_mean() -> None:
    torch.manual_seed(0)
    model = AutoEncoder(
        20, 4, 16, 2, residual=True, variational=True, block="preact", output="sigmoid"
    ).eval()
    x = torch.rand(7, 20)
    s1, s2 = model.score(x), model.score(x)
    assert torch.equal(s1, s2)
    mu, _ = model.encode(x)
    assert torch.allclose(s1, ((model.decode(mu) - x) ** 2).sum(1))


@pytest.mark.parametrize("name", VARIANTS)
def test_the_model_summary_counts_the_flops_of_scoring_one_sample(name: str) -> None:
    residual, variational = VARIANTS[name]
    model = AnomalyAutoEncoder(64, n_layers=3, hidden_dim=32, latent_dim=8, residual=residual,
                               variational=variational)  # fmt: skip
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    summary = ModelSummary(model, max_depth=2)
    assert summary.total_flops == sum(2 * m.in_features * m.out_features for m in linear)
    assert summary.in_sizes[summary.layer_names.index("net.encoder")] == [1, 64]
    assert model.training  # the summary's forward pass leaves the model as it found it


def test_out_of_range_settings_are_rejected_by_name_by_the_module() -> None:
    with pytest.raises(ValueError, match=r"model.block='bottleneck' is invalid.* model.lr=0 is invalid"):
        AnomalyAutoEncoder(4, block="bottleneck", lr=0)


def test_losses_are_float32_under_bf16_autocast() -> None:
    model = AutoEncoder(20, 4, 16, 2, residual=True, variational=True, block="preact", output="sigmoid")
    x = torch.rand(8, 20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        losses = autoencoder_loss(x, out.x_hat, out.mu, out.logvar, beta=1.0)
    assert out.x_hat.dtype == torch.bfloat16  # the network did run in bf16 ...
    assert {v.dtype for v in losses.values()} == {torch.float32}  # ... the sums did not


def test_a_compiled_model_keeps_its_checkpoint_keys() -> None:
    compiled = AnomalyAutoEncoder(20, n_layers=2, hidden_dim=16, latent_dim=4, compile=True)
    eager = AnomalyAutoEncoder(20, n_layers=2, hidden_dim=16, latent_dim=4)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    eager.load_state_dict(compiled.state_dict())


@pytest.mark.parametrize(("precision", "fused"), [("32-true", True), ("bf16-mixed", False)])
def test_the_optimizer_is_fused_adam_on_cpu_but_under_mixed_precision(precision: str, fused: bool) -> None:
    model = AnomalyAutoEncoder(20, n_layers=2, hidden_dim=16, latent_dim=4)
    model.trainer = L.Trainer(accelerator="cpu", precision=precision, logger=False)
    opt = model.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["fused"] is fused


@pytest.mark.parametrize("plain,residual", [("ae", "rae"), ("vae", "rvae")])
def test_a_seed_gives_residual_and_plain_models_the_same_initial_weights(plain: str, residual: str) -> None:
    """What the report's pairing by seed rests on: the skip is the only difference between the two."""
    weights = []
    for name in (plain, residual):
        L.seed_everything(3)
        weights.append(
            hydra.utils.instantiate(compose_train([f"model={name}"]).model, input_dim=64).state_dict()
        )
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
