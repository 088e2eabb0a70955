"""energies.Tempered: E/T as an energy; the (δ, η) Langevin form is standard Langevin on it."""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import pytest
import torch
from torch import nn

import ebmkit
from ebmkit.checkpoint.rng import seed_everything
from ebmkit.config import build_configured
from ebmkit.data.toy import EightGaussians
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.energies.tempered import TemperedEnergy
from ebmkit.initializers.noise import Noise
from ebmkit.samplers.langevin import Langevin
from ebmkit.samplers.mala import MALA
from ebmkit.testing import SamplerCase, gaussian_moment_report
from ebmkit.testing.targets import STANDARD_GAUSSIAN, GaussianTarget
from ebmkit.trainers.contrastive import Contrastive

CONFIG = Path(__file__).resolve().parents[1] / "gin" / "langevin_eight_gaussians.gin"


def nonlinear_energy(seed: int = 0) -> nn.Module:
    """A small SiLU MLP in float64: its gradient changes along the chains."""
    torch.manual_seed(seed)
    return MLPEnergy(in_features=2, hidden=(16, 16)).double()


def run(sampler: Langevin, energy: nn.Module, x0: torch.Tensor, n_steps: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(11)
    return sampler.sample(energy, x0, n_steps, generator=generator).x


# -- method reference §8 T3: the (δ, η) form on E is standard Langevin on E/T ----------------


@pytest.mark.parametrize(("delta", "eta"), [(0.5, 1e-3), (0.3, 0.05)])
def test_the_delta_eta_form_on_e_equals_standard_langevin_on_e_over_t(
    delta: float, eta: float
) -> None:
    energy = nonlinear_energy()
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    code_form = Langevin(step_size=delta**2 / 2, noise_scale=eta)  # y − (δ²/2)∇E + ηε on E
    standard = Langevin(step_size=eta**2 / 2)  # noise sqrt(2s) = η, on E/T
    tempered = TemperedEnergy(network=energy, temperature=(eta / delta) ** 2)
    assert standard.noise_scale == pytest.approx(eta, rel=1e-12)
    expected = run(code_form, energy, x0, 30)
    got = run(standard, tempered, x0, 30)
    assert (expected - x0).abs().max() > 0.01  # the chains moved, through a nonlinear ∇E
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # and the comparison has power: twice the temperature is another chain
    wrong = TemperedEnergy(network=energy, temperature=2 * (eta / delta) ** 2)
    assert not torch.allclose(run(standard, wrong, x0, 30), expected, rtol=1e-5, atol=1e-6)


def test_zero_steps_is_the_identity_in_both_forms() -> None:
    energy = nonlinear_energy()
    x0 = torch.randn(8, 2, dtype=torch.float64)
    tempered = TemperedEnergy(network=energy, temperature=4e-6)
    assert torch.equal(run(Langevin(step_size=0.125, noise_scale=1e-3), energy, x0, 0), x0)
    assert torch.equal(run(Langevin(step_size=5e-7), tempered, x0, 0), x0)


# -- any sampler targets exp(−E/T) on the wrapper ---------------------------------------------


@attrs.frozen(eq=False)
class ChainsOn(GaussianTarget):
    """The law N(mean, cov) the chains are held to, while they run on `energy_module`."""

    energy_module: nn.Module = attrs.field(kw_only=True)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy_module(x)


class Quadratic(nn.Module):
    """E(x) = ½ (x − m)ᵀ C⁻¹ (x − m) of `ebmkit.testing`'s standard Gaussian."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return STANDARD_GAUSSIAN.energy(x)


@pytest.mark.parametrize(("temperature", "passes"), [(0.25, True), (1.0, False)])
def test_mala_on_the_tempered_energy_targets_exp_of_minus_e_over_t(
    temperature: float, passes: bool
) -> None:
    # exp(−E/T) with E of N(m, C) is N(m, T·C). At T = 1 the chains target N(m, C) instead:
    # the check, held to N(m, 0.25·C), must fail them (its power).
    law = ChainsOn(
        STANDARD_GAUSSIAN.mean,
        0.25 * STANDARD_GAUSSIAN.cov,
        energy_module=TemperedEnergy(network=Quadratic(), temperature=temperature),
    )
    case = SamplerCase(name="mala-on-E/T", sampler=MALA(step_size=0.05), exact=True)
    report = gaussian_moment_report(case, target=law, n_chains=4000, n_steps=200)
    assert report.passed is passes, str(report)
    if passes:  # the MH test ran on E/T: a healthy acceptance at this step
        assert 0.5 < report.acceptance["acceptance"] < 1.0, report.acceptance


# -- the trainer: loss ÷ T, model density exp(−E/T), checkpoints of network.* ----------------


def trainer_on(energy: nn.Module) -> Contrastive:
    seed_everything(0)
    return Contrastive(
        energy=energy,
        sampler=Langevin(step_size=0.01, n_steps=0),  # chains = the (same) noise starts
        initializer=Noise(shape=(2,), low=-3, high=3),
        dataset=EightGaussians(n_samples=64, seed=0),
        batch_size=32,
        n_rounds=1,
    )


def test_the_contrastive_loss_on_the_tempered_energy_is_the_plain_loss_over_t() -> None:
    temperature = 0.05
    torch.manual_seed(5)
    network = MLPEnergy(in_features=2, hidden=(16, 16))
    twin = _copy(network)  # before the plain run's step changes `network`
    plain = trainer_on(network)
    plain_round = plain.train_round()
    tempered = trainer_on(TemperedEnergy(network=twin, temperature=temperature))
    tempered_round = tempered.train_round()
    assert torch.equal(plain_round.x_data, tempered_round.x_data)
    assert torch.equal(plain_round.result.x, tempered_round.result.x)
    plain_loss = plain_round.losses["loss/contrastive"]
    torch.testing.assert_close(tempered_round.losses["loss/contrastive"], plain_loss / temperature)
    torch.testing.assert_close(tempered_round.energy_data, plain_round.energy_data / temperature)
    for (name, p), q in zip(
        plain.energy.named_parameters(), tempered.energy.network.parameters(), strict=True
    ):
        torch.testing.assert_close(q.grad, p.grad / temperature, msg=name)


def _copy(network: nn.Module) -> nn.Module:
    twin = MLPEnergy(in_features=2, hidden=(16, 16))
    twin.load_state_dict(network.state_dict())
    return twin


def test_a_run_with_a_tempered_energy_is_scored_on_exp_of_minus_e_over_t() -> None:
    network = MLPEnergy(in_features=2, hidden=(8,))
    trainer = trainer_on(TemperedEnergy(network=network, temperature=0.5))
    x = torch.randn(5, 2)
    scored = trainer.model_energy()
    assert scored is trainer.energy  # no binding needed: the trainer's energy is E/T
    with torch.no_grad():
        torch.testing.assert_close(scored(x), network(x) / 0.5)
    assert set(trainer.state_dict()["energy"]) == {
        f"network.{name}" for name in network.state_dict()
    }


@pytest.mark.usefixtures("builtin_registry")
def test_a_config_binds_energies_tempered_around_any_energy() -> None:
    bindings = [
        "trainers.Contrastive.energy = @energies.Tempered()",
        "energies.Tempered.network = @energies.MLP()",
        "energies.Tempered.temperature = 0.25",
    ]
    trainer = build_configured(CONFIG, "trainers.Contrastive", bindings)
    assert isinstance(trainer.energy, ebmkit.TemperedEnergy)
    assert isinstance(trainer.energy.network, MLPEnergy)
    assert trainer.energy.temperature == 0.25
    assert "Tempered" in {component.name for component in ebmkit.components("energy")}


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan, True, "1"])
def test_a_temperature_that_is_not_a_finite_positive_number_is_refused(temperature) -> None:
    with pytest.raises(ValueError, match=r"energies\.Tempered\.temperature must be a finite"):
        TemperedEnergy(network=nn.Linear(2, 1), temperature=temperature)


def test_a_network_that_is_not_a_module_is_refused_naming_the_binding() -> None:
    with pytest.raises(TypeError, match=r"energies\.Tempered\.network = @energies\.MLP\(\)"):
        TemperedEnergy(network=lambda x: x.sum(1), temperature=1.0)
