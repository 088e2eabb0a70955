"""Every registered flow through `ebmkit.testing`'s flow checks, the checks' power, and what
each flow promises (near-identity start, forward and reverse KL fits, Glow's actnorm init,
dequantisation and support, clear shape errors).

The table is the registry: each registered flow's `testing_cases()` (core or plugin), so a
plugin's flow is covered here without editing this file. Numbers seen (float64, max |log-det −
autograd log|det J||): Glow 1.4e-14, NSF 2.7e-15, MAF 3.6e-16, RealNVP 1.7e-16.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

import ebmkit
from ebmkit.flows import MAF, NSF, Affine, ElementwiseAffine, FlowModule, Glow, RealNVP
from ebmkit.flows.base import standard_normal_log_prob
from ebmkit.flows.glow import ActNorm
from ebmkit.records import Round
from ebmkit.testing import (
    FLOW_CASES_METHOD,
    check_flow_invertible,
    check_flow_logdet,
    check_flow_sampling_reproducible,
    check_flow_save_load,
    flow_round,
    registered_flow_cases,
)

REGISTERED = registered_flow_cases()
IDS = [registered.id for registered in REGISTERED]
ZUKO_FLOWS = [RealNVP, NSF, MAF]


# --------------------------------------------------------------------------------------
# The table: every registered flow


def test_every_registered_flow_offers_cases() -> None:
    names = {component.name for component in ebmkit.components("flow")}
    assert {registered.flow for registered in REGISTERED} == names
    problems = [registered.problem for registered in REGISTERED if registered.case is None]
    assert not problems, "\n".join(problems)
    assert {"Affine", "ElementwiseAffine", "RealNVP", "NSF", "MAF", "Glow"} <= names


@pytest.mark.parametrize("registered", REGISTERED, ids=IDS)
def test_registered_flow_is_invertible_in_float64_and_in_its_own_dtype(registered) -> None:
    check_flow_invertible(registered.get())
    check_flow_invertible(registered.get(), dtype=None)


@pytest.mark.parametrize("registered", REGISTERED, ids=IDS)
def test_registered_flow_logdet_matches_the_autograd_jacobian(registered) -> None:
    assert check_flow_logdet(registered.get()) < 1e-6


@pytest.mark.parametrize("registered", REGISTERED, ids=IDS)
def test_registered_flow_saves_and_loads_and_continues_identically(registered) -> None:
    check_flow_save_load(registered.get())


@pytest.mark.parametrize("registered", REGISTERED, ids=IDS)
def test_registered_flow_samples_reproducibly_from_its_generator(registered) -> None:
    check_flow_sampling_reproducible(registered.get())


# --------------------------------------------------------------------------------------
# The convention: what a registered flow without cases gets


@dataclass
class FakeComponent:
    name: str
    plugin: str
    factory: Callable


class FakeRegistry:
    def __init__(self, **factories: Callable) -> None:
        self.found = [FakeComponent(name, "fake", factory) for name, factory in factories.items()]

    def components(self, kind: str) -> list[FakeComponent]:
        assert kind == "flow"
        return self.found


class InheritsItsCases(RealNVP):
    """A RealNVP variant whose inherited `testing_cases` builds RealNVPs of its class: fine."""


class ForeignCases(Affine):
    """Offers another class's instances."""

    @classmethod
    def testing_cases(cls) -> list:
        return [Affine(dim=2)]


def test_a_flow_without_cases_fails_with_what_to_add() -> None:
    found = registered_flow_cases(FakeRegistry(Bare=lambda: Affine(dim=2)))
    assert [registered.id for registered in found] == ["Bare-no-cases"]
    with pytest.raises(AssertionError, match=rf"'Bare' \(plugin 'fake'\).*`{FLOW_CASES_METHOD}"):
        found[0].get()


def test_broken_empty_or_foreign_cases_are_refused() -> None:
    def broken() -> list:
        raise RuntimeError("oops")

    class Broken:
        testing_cases = staticmethod(broken)

    class Empty:
        testing_cases = staticmethod(list)

    class Classes:
        testing_cases = staticmethod(lambda: [Affine])

    found = registered_flow_cases(
        FakeRegistry(
            Broken=Broken,
            Empty=Empty,
            Classes=Classes,
            Foreign=ForeignCases,
            Child=InheritsItsCases,
        )
    )
    problems = {registered.flow: registered.problem for registered in found}
    assert "RuntimeError('oops')" in problems["Broken"]
    assert "no cases" in problems["Empty"]
    assert "not a flow instance" in problems["Classes"]
    assert "not a ForeignCases" in problems["Foreign"] and "define it on" in problems["Foreign"]
    assert problems["Child"] is None  # built by cls(...): instances of the subclass
    assert [r.id for r in found if r.flow == "Child"] == ["Child-0", "Child-1"]


# --------------------------------------------------------------------------------------
# Wrong flows: each check must fail one


class HalfLogdet(Affine):
    """Affine whose forward log-det is half the truth (a dropped Jacobian term)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z, logdet = super().forward(x)
        return z, 0.5 * logdet


class GlowWithoutLogitJacobian(Glow):
    """Glow whose density forgets the logit pre-processing's Jacobian (a common slip)."""

    def _to_logit(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, _ = super()._to_logit(x)
        return y, x.new_zeros(x.shape[0])


class SloppyInverse(Affine):
    """Affine whose inverse is off by 1e-3."""

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x, logdet = super().inverse(z)
        return x + 1e-3, logdet


class ForgetsAShift(Affine):
    """Affine that learns a running offset kept in a plain attribute (not in state_dict)."""

    def __init__(self, **settings: object) -> None:
        super().__init__(**settings)
        self.offset = 0.0

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return super().forward(x - self.offset)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        x, logdet = super().inverse(z)
        return x + self.offset, logdet

    def loss(self, round: Round) -> dict[str, Tensor]:
        self.offset += 0.1
        return super().loss(round)


class GlobalNoise(Affine):
    """Affine that draws its base noise from the global RNG (zuko's .sample does)."""

    def base_noise(self, n: int, *, generator=None, like=None) -> Tensor:
        return torch.randn(n, *self.event_shape)


class FixedNoise(Affine):
    """Affine that ignores the generator it is given (a seed of its own)."""

    def base_noise(self, n: int, *, generator=None, like=None) -> Tensor:
        return torch.randn(n, *self.event_shape, generator=torch.Generator().manual_seed(7))


def _away_from_identity(flow: FlowModule) -> FlowModule:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator))
    return flow


def test_the_logdet_check_fails_a_flow_with_a_wrong_logdet() -> None:
    flow = HalfLogdet(dim=3, loc=1.0, scale=2.0)
    with pytest.raises(AssertionError, match=r"flows.HalfLogdet's log-det disagrees"):
        check_flow_logdet(flow)
    assert check_flow_logdet(Affine(dim=3, loc=1.0, scale=2.0)) < 1e-12


def test_the_logdet_check_fails_a_glow_that_drops_the_logit_jacobian() -> None:
    (case, _) = Glow.testing_cases()
    wrong = GlowWithoutLogitJacobian(
        event_shape=(3, 4, 4), levels=1, steps_per_level=2, hidden_channels=8
    )
    wrong.load_state_dict(case.state_dict()["module"])
    with pytest.raises(AssertionError, match=r"forward max \|error\| = [1-9]"):
        check_flow_logdet(wrong)


def test_the_invertibility_check_fails_a_sloppy_inverse() -> None:
    with pytest.raises(AssertionError, match=r"not invertible within 1e-06: .*= 0.001"):
        check_flow_invertible(SloppyInverse(dim=2))


def test_the_save_load_check_fails_state_kept_outside_the_state_dict() -> None:
    with pytest.raises(AssertionError, match="reloaded copy's forward differs"):
        check_flow_save_load(ForgetsAShift(dim=2))


def test_the_save_load_check_leaves_the_flow_and_the_global_rng_alone() -> None:
    flow = _away_from_identity(RealNVP(dim=2, hidden_features=(8,)))
    before = {name: value.clone() for name, value in flow.state_dict()["module"].items()}
    rng = torch.get_rng_state()
    check_flow_save_load(flow)
    assert torch.equal(torch.get_rng_state(), rng)
    after = flow.state_dict()["module"]
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_the_sampling_check_fails_the_global_rng_and_an_ignored_generator() -> None:
    with pytest.raises(AssertionError, match="drew from the global torch RNG"):
        check_flow_sampling_reproducible(GlobalNoise(dim=2))
    with pytest.raises(AssertionError, match="ignores the generator"):
        check_flow_sampling_reproducible(FixedNoise(dim=2))


# --------------------------------------------------------------------------------------
# zuko's flows: near the identity at the start, settings passed through, direction right


@pytest.mark.parametrize("flow_class", ZUKO_FLOWS, ids=lambda c: c.__name__)
def test_a_fresh_zuko_flow_is_near_the_identity(flow_class: type) -> None:
    torch.manual_seed(0)
    x = 1.5 * torch.randn(256, 3)
    standard = standard_normal_log_prob(x)
    near = flow_class(dim=3).log_prob(x)
    assert (near - standard).abs().max() < 0.05  # init_scale = 1e-3
    exact = flow_class(dim=3, init_scale=0.0).log_prob(x)
    torch.testing.assert_close(exact, standard, atol=1e-5, rtol=0)
    far = flow_class(dim=3, init_scale=1.0).log_prob(x)  # zuko's own init
    assert (far - standard).abs().max() > 0.2


@pytest.mark.parametrize("flow_class", ZUKO_FLOWS, ids=lambda c: c.__name__)
def test_a_zuko_flow_maps_data_to_the_base_as_zukos_distribution_does(flow_class: type) -> None:
    torch.manual_seed(1)
    flow = flow_class(dim=3, hidden_features=(16,), init_scale=1.0)
    x = torch.randn(8, 3)
    distribution = flow.flow()
    torch.testing.assert_close(flow.log_prob(x), distribution.log_prob(x))
    z, _ = flow(x)
    torch.testing.assert_close(z, distribution.transform(x))


def test_zuko_settings_pass_through() -> None:
    flow = RealNVP(dim=4, transforms=5, hidden_features=(8, 8, 8))
    assert len(flow.flow.transform.transforms) == 5
    layers = list(flow.flow.transform.transforms[0].hyper)[::2]
    widths = [layer.weight.shape[0] for layer in layers]
    assert widths == [8, 8, 8, 4]  # 2 kept → 2 changed × (shift, scale)
    spline = NSF(dim=2, bins=5, passes=2)
    assert spline.flow.transform.transforms[0].passes == 2
    assert spline.flow.transform.transforms[0].total == 5 + 5 + 4
    assert MAF(dim=3, randperm=True).flow.transform.transforms[0].order is not None


def test_a_zuko_flow_refuses_another_dtype_naming_the_fix() -> None:
    flow = RealNVP(dim=2)
    with pytest.raises(
        TypeError, match=r"torch.float32 parameters but got torch.float64.*flow.to"
    ):
        flow.log_prob(torch.zeros(3, 2, dtype=torch.float64))
    flow.to(torch.float64)
    assert flow.log_prob(torch.zeros(3, 2, dtype=torch.float64)).dtype == torch.float64


# --------------------------------------------------------------------------------------
# Errors that name the component and the fix


def test_an_event_shape_mismatch_names_the_component_and_the_fix() -> None:
    with pytest.raises(
        ValueError, match=r"flows.RealNVP has dim = 2 .* set flows.RealNVP.dim = 3"
    ):
        RealNVP(dim=2).log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"flows.MAF .*flatten the data to vectors"):
        MAF(dim=2).log_prob(torch.zeros(4, 1, 2, 2))
    with pytest.raises(ValueError, match=r"set flows.Affine.event_shape = \(3,\)"):
        Affine(dim=2).log_prob(torch.zeros(4, 3))
    glow = Glow(event_shape=(3, 8, 8), levels=1, steps_per_level=1, hidden_channels=4)
    with pytest.raises(ValueError, match=r"flows.Glow has event_shape \(3, 8, 8\) .*\(1, 8, 8\)"):
        glow.log_prob(torch.zeros(2, 1, 8, 8))


def test_a_glow_refuses_sizes_its_levels_cannot_squeeze() -> None:
    with pytest.raises(ValueError, match=r"6×6 is not divisible by 2\*\*levels = 4; lower"):
        Glow(event_shape=(3, 6, 6), levels=2)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        Glow(event_shape=(16,))


# --------------------------------------------------------------------------------------
# Fitting: forward KL (maximum likelihood) and the reverse-KL mix


MEAN = torch.tensor([1.0, -2.0])
COVARIANCE = torch.tensor([[2.0, 0.8], [0.8, 0.5]])


def test_forward_kl_fits_an_affine_flow_to_the_samples_mean_and_covariance() -> None:
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(1000, 2, generator=generator)
    x = MEAN + noise @ torch.linalg.cholesky(COVARIANCE).T
    flow = Affine(dim=2, learning_rate=0.05)
    round = flow_round(x)
    for _ in range(300):
        losses = flow.learn(round)
    tril = flow.scale_tril().detach()
    torch.testing.assert_close(flow.loc.detach(), x.mean(0), atol=1e-3, rtol=0)
    torch.testing.assert_close(tril @ tril.T, torch.cov(x.T, correction=0), atol=1e-3, rtol=0)
    assert set(losses) == {"forward_kl", "loss"}


class GaussianEnergy(nn.Module):
    """E(x) = (x − μ)ᵀ Σ⁻¹ (x − μ) / 2."""

    def forward(self, x: Tensor) -> Tensor:
        centred = x - MEAN
        return 0.5 * (centred @ torch.linalg.inv(COVARIANCE) * centred).sum(1)


def test_reverse_kl_fits_an_affine_flow_to_a_gaussian_energy() -> None:
    torch.manual_seed(0)
    flow = Affine(
        dim=2,
        learning_rate=0.1,
        reverse_kl_weight=1.0,
        scheduler=lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 400, 0.1),
    )
    round = flow_round(torch.zeros(512, 2), energy=GaussianEnergy())  # no data to fit
    for _ in range(600):
        losses = flow.learn(round)
    tril = flow.scale_tril().detach()
    torch.testing.assert_close(flow.loc.detach(), MEAN, atol=0.05, rtol=0)
    torch.testing.assert_close(tril @ tril.T, COVARIANCE, atol=0.05, rtol=0)
    # the loss is mean[E(T(z)) − log|det ∂T/∂z|] = KL(q‖p) − log Z + D/2·(1 + log 2π); at the
    # optimum (KL = 0, Z = 2π·sqrt(det Σ), D = 2) that is 1 − log(det Σ)/2 (batch sd ≈ 0.05)
    optimum = 1 - 0.5 * math.log(torch.linalg.det(COVARIANCE))
    assert losses["reverse_kl"].item() == pytest.approx(optimum, abs=0.15)


def test_the_reverse_kl_mix_needs_the_rounds_energy() -> None:
    flow = Affine(dim=2, reverse_kl_weight=0.5, fit_on="samples")
    with pytest.raises(ValueError, match=r"reverse_kl_weight > 0 needs the round's energy"):
        flow.learn(ebmkit.testing.finished_round(1, *_init_and_result(torch.zeros(4, 2))))


def _init_and_result(x: Tensor) -> tuple:
    round = flow_round(x)
    return round.init, round.result


# --------------------------------------------------------------------------------------
# Glow: actnorm's data-dependent init, dequantisation, support


def _images(n: int, shape: tuple[int, ...] = (3, 8, 8), seed: int = 0) -> Tensor:
    """8-bit images scaled to [−1, 1], as ebmkit's image sets give them."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.randint(0, 256, (n, *shape), generator=generator)
    return levels.float().div(255).mul(2).sub(1)


def _small_glow() -> Glow:
    return Glow(event_shape=(3, 8, 8), levels=2, steps_per_level=2, hidden_channels=8)


def test_glow_actnorm_is_the_identity_until_its_data_dependent_init_on_the_first_batch() -> None:
    torch.manual_seed(0)
    glow = _small_glow()
    first = next(m for m in glow.modules() if isinstance(m, ActNorm))
    assert not bool(glow.initialized)
    assert first.bias.abs().max() == 0 and first.log_scale.abs().max() == 0
    images = _images(64)
    glow.learn(flow_round(images))
    assert bool(glow.initialized) and "initialized" in glow.state_dict()["module"]
    # the first actnorm saw the logit of the data: its output was normalised per channel
    y, _ = glow._to_logit(images.clamp(-1, 1))
    from ebmkit.flows.glow import squeeze

    seen = squeeze(y)
    normalised = (seen - seen.mean((0, 2, 3), keepdim=True)) / seen.std(
        (0, 2, 3), keepdim=True, unbiased=False
    )
    with torch.no_grad():
        out, _ = first(seen)
    torch.testing.assert_close(out, normalised, atol=0.05, rtol=0)  # moved by one Adam step


def test_a_reloaded_glow_does_not_initialise_again_and_continues_bit_identically() -> None:
    torch.manual_seed(0)
    glow = _small_glow()
    torch.manual_seed(1)
    glow.learn(flow_round(_images(32, seed=1)))
    saved = copy.deepcopy(glow.state_dict())  # as a checkpoint file holds it: no shared tensors
    torch.manual_seed(99)
    fresh = _small_glow()
    fresh.load_state_dict(saved)
    assert bool(fresh.initialized)
    fresh.initialize = _refuse  # type: ignore[method-assign]
    later = flow_round(_images(32, seed=2))
    torch.manual_seed(2)
    expected = glow.learn(later)
    torch.manual_seed(2)
    got = fresh.learn(later)
    assert torch.equal(expected["loss"], got["loss"])
    for (name, a), b in zip(
        glow.state_dict()["module"].items(), fresh.state_dict()["module"].values(), strict=True
    ):
        assert torch.equal(a, b), name


def _refuse(x: Tensor) -> None:
    raise AssertionError("a reloaded Glow initialised its actnorms again")


def test_glow_dequantises_the_data_it_fits_by_one_level_and_only_in_loss() -> None:
    glow = _small_glow()
    images = _images(16)
    torch.manual_seed(0)
    points = glow.training_points(flow_round(images))
    assert (points - images).min() >= 0 and (points - images).max() < 2 / 256
    assert not torch.equal(points, images)
    torch.manual_seed(0)
    assert torch.equal(glow.training_points(flow_round(images)), points)  # the global RNG
    rng = torch.get_rng_state()
    glow.log_prob(images)
    assert torch.equal(torch.get_rng_state(), rng)  # log_prob itself draws nothing
    samples = Glow(event_shape=(3, 8, 8), levels=1, fit_on="samples", hidden_channels=4)
    assert torch.equal(samples.training_points(flow_round(2 * images)), images.mul(2).clamp(-1, 1))


def test_glow_density_is_over_minus_one_to_one_and_zero_outside_its_support() -> None:
    glow = _small_glow()
    low, high = glow.support
    assert low == pytest.approx(-1 - 0.1 / 0.9) and high == pytest.approx(1 + 0.1 / 0.9)
    images = _images(4)
    outside = images.clone()
    outside[0, 0, 0, 0] = 1.2
    values = glow.log_prob(torch.cat([images, outside]))
    assert torch.isfinite(values[:4]).all() and torch.isfinite(values[5:]).all()
    assert values[4] == -math.inf
    samples = glow.sample(16, generator=torch.Generator().manual_seed(0))
    assert samples.min() > low and samples.max() < high


def test_a_fresh_glow_is_the_logit_preprocessing_then_a_rotation() -> None:
    """Before its init the actnorms and couplings are the identity and the 1×1 convs are
    rotations, so log λ(x) = log N(z) + the logit pre-processing's log-det, |z| = |logit(x)|."""
    glow = _small_glow()
    images = _images(8)
    y, logit_logdet = glow._to_logit(images)
    z, logdet = glow(images)
    torch.testing.assert_close(logdet, logit_logdet, atol=1e-3, rtol=0)
    torch.testing.assert_close(z.flatten(1).norm(dim=1), y.flatten(1).norm(dim=1))


def test_the_default_glow_is_small_not_flow_plus_plus() -> None:
    glow = Glow(event_shape=(3, 32, 32))
    size = sum(parameter.numel() for parameter in glow.parameters())
    assert 100_000 < size < 200_000  # CoopFlow's Flow++ has 28.78M


def test_flows_are_registered_as_gin_configurables() -> None:
    for name in ("Affine", "ElementwiseAffine", "RealNVP", "NSF", "MAF", "Glow"):
        component = ebmkit.registry.get_registry().get("flow", name)
        assert component.gin_name == f"flows.{name}"
    flow = ebmkit.create("flow", "RealNVP", dim=2, transforms=2)
    assert isinstance(flow, RealNVP) and flow.event_shape == (2,)
    assert isinstance(
        ebmkit.create("flow", "ElementwiseAffine", event_shape=None), ElementwiseAffine
    )
