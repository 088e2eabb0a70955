"""STANLEY: the exact tests of the method reference (§1.5) and the ebmkit sampler contract.

1. Detailed balance of the MH kernel, checked against a hand-written proposal density.
2. Invariance of exp(−E) under MH-STANLEY, through `ebmkit.testing` (a correlated Gaussian
   from far away, a two-mode mixture whose modes the chains cross), and the sampler
   contract of every case `Stanley.testing_cases()` offers.
3. The ULA limit: Γ = εI reproduces core Langevin bit for bit.
4. The bias of the unadjusted chain, and its removal by MH.
5. The `reduce` modes on image-shaped chains.
6. The rest of the contract: registry and gin, gradient counts, parameter grads, the legacy
   update, argument checks.

Statistical checks look only at the final states of many independent chains, so the samples
compared are i.i.d.; each tolerance is given with its standard error.
"""

from __future__ import annotations

import doctest
import math
import textwrap
from pathlib import Path

import attrs
import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Normal

import ebmkit
import ebmkit_stanley.kernel as kernel_module
from ebmkit import ChainState
from ebmkit.testing import (
    MixtureTarget,
    check_continuation,
    check_contract,
    check_gaussian_moments,
    check_mixture,
    check_reproducible,
)
from ebmkit_stanley import (
    Stanley,
    anisotropic_step_size,
    metropolis_log_ratio,
    proposal_log_prob,
)

F64 = torch.float64
COV_2D = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=F64)
PRECISION_2D = torch.linalg.inv(COV_2D)


def gaussian_energy(x: Tensor) -> Tensor:
    """E(x) = ½ xᵀ Σ⁻¹ x for Σ = [[1, .8], [.8, 1]]."""
    return 0.5 * ((x @ PRECISION_2D.to(x.dtype)) * x).sum(1)


def standard_normal_energy(x: Tensor) -> Tensor:
    return 0.5 * x.square().flatten(1).sum(1)


CASES = {case.name: case for case in Stanley.testing_cases()}


# --------------------------------------------------------------------------------------
# A hand-written STANLEY proposal, independent of the plugin's code


def hand_gamma(grad: Tensor, step_size: float, th: float) -> Tensor:
    """γᵢ = ε·th / max(th, |gᵢ|), written out coordinate by coordinate (elementwise)."""
    return step_size * th / torch.maximum(torch.full_like(grad, th), grad.abs())


def hand_log_q(y: Tensor, x: Tensor, step_size: float, th: float, energy=gaussian_energy):
    """log q(y|x) for the elementwise kernel, with torch.distributions."""
    _, grad = ebmkit.energy_and_grad(energy, x)
    gamma = hand_gamma(grad, step_size, th)
    return Normal(x - 0.5 * gamma * grad, gamma.sqrt()).log_prob(y).sum(1)


# --------------------------------------------------------------------------------------
# 1. Detailed balance


def test_detailed_balance_holds_and_needs_the_reverse_gamma() -> None:
    """π(z) q(y|z) α(z,y) = π(y) q(z|y) α(y,z) for random pairs, with α from the plugin and
    q written by hand; α computed with Γ(z) in the reverse density breaks the identity."""
    step_size, th = 0.5, 0.5
    generator = torch.Generator().manual_seed(0)
    z = 1.5 * torch.randn(2000, 2, generator=generator, dtype=F64)
    y = 1.5 * torch.randn(2000, 2, generator=generator, dtype=F64)
    sampler = Stanley(step_size=step_size, th=th, metropolis=True)
    state_z, state_y = sampler.init(z, gaussian_energy), sampler.init(y, gaussian_energy)
    gamma_z = state_z.extras["gamma"]
    # Both regimes of γ occur: below the threshold (γ = ε) and above it (γ < ε).
    assert (gamma_z == step_size).any() and (gamma_z < step_size).any()
    assert torch.allclose(gamma_z, hand_gamma(state_z.grad, step_size, th), rtol=0, atol=1e-15)
    # The plugin's density is the hand one.
    assert torch.allclose(
        proposal_log_prob(y, z, state_z.grad, gamma_z),
        hand_log_q(y, z, step_size, th),
        rtol=0,
        atol=1e-10,
    )

    def balance_gap(log_alpha_zy: Tensor, log_alpha_yz: Tensor) -> Tensor:
        forward = -gaussian_energy(z) + hand_log_q(y, z, step_size, th) + log_alpha_zy
        backward = -gaussian_energy(y) + hand_log_q(z, y, step_size, th) + log_alpha_yz
        return (forward - backward).abs()

    log_alpha_zy = metropolis_log_ratio(state_z, state_y).clamp(max=0.0)
    log_alpha_yz = metropolis_log_ratio(state_y, state_z).clamp(max=0.0)
    assert balance_gap(log_alpha_zy, log_alpha_yz).max() < 1e-10
    assert ((log_alpha_zy < -1e-3) & (log_alpha_yz < -1e-3)).sum() == 0  # one side accepts

    def wrong_ratio(a: ChainState, b: ChainState) -> Tensor:
        """The common bug: the reverse density q(a|b) built with Γ(a), the forward step."""
        gamma_a = a.extras["gamma"]
        forward = proposal_log_prob(b.x, a.x, a.grad, gamma_a)
        reverse = proposal_log_prob(a.x, b.x, b.grad, gamma_a)
        return a.energy - b.energy + reverse - forward

    wrong_zy = wrong_ratio(state_z, state_y).clamp(max=0.0)
    wrong_yz = wrong_ratio(state_y, state_z).clamp(max=0.0)
    gap = balance_gap(wrong_zy, wrong_yz)
    assert gap.median() > 1.0 and (gap > 1e-3).double().mean() > 0.9  # median ≈ 29 nats


def test_mh_step_matches_a_hand_computation() -> None:
    """One MH step: proposal μ(z) + Γ(z)^½ ξ and acceptance log u < log α, same random draws."""
    step_size, th = 0.5, 0.5
    z = 1.5 * torch.randn(500, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    sampler = Stanley(step_size=step_size, th=th, metropolis=True)
    state = sampler.init(z, gaussian_energy)
    new_state, info = sampler.step(
        state, gaussian_energy, generator=torch.Generator().manual_seed(2)
    )

    generator = torch.Generator().manual_seed(2)
    xi = torch.randn(z.shape, generator=generator, dtype=F64)
    uniform = torch.rand(500, generator=generator)
    gamma = hand_gamma(state.grad, step_size, th)
    y = z - 0.5 * gamma * state.grad + gamma.sqrt() * xi
    log_ratio = (
        gaussian_energy(z)
        - gaussian_energy(y)
        + hand_log_q(z, y, step_size, th)
        - hand_log_q(y, z, step_size, th)
    )
    accepted = torch.log(uniform) < log_ratio
    assert 0.2 < accepted.double().mean() < 1.0
    assert torch.equal(info.accepted, accepted)
    assert torch.allclose(info.acceptance_prob, log_ratio.clamp(max=0).exp(), atol=1e-12)
    assert torch.allclose(new_state.x, torch.where(accepted[:, None], y, z), rtol=0, atol=1e-14)
    assert torch.allclose(info.step_size, gamma.mean(1), rtol=0, atol=1e-15)
    # The accepted state's E, ∇E and Γ are cached (the next step needs no new gradient).
    fresh = sampler.init(new_state.x, gaussian_energy)
    for cached, exact in (
        (new_state.energy, fresh.energy),
        (new_state.grad, fresh.grad),
        (new_state.extras["gamma"], fresh.extras["gamma"]),
    ):
        assert torch.allclose(cached, exact, rtol=0, atol=1e-12)


# --------------------------------------------------------------------------------------
# 2. Invariance


def test_mh_stanley_reaches_the_correlated_gaussian_from_far_away() -> None:
    """`ebmkit.testing`'s Gaussian check: 4000 chains from 9 SD out, 200 MH steps (th = ε =
    0.5), mean and covariance within 5 SE along the target's principal axes (observed |z| ≤
    1.0). The same kernel without MH, held to the target, misses by z ≈ 60 (variances 2.2)."""
    report = check_gaussian_moments(CASES["metropolis"])
    assert report.acceptance["acceptance"] > 0.5  # the chains really move (0.79)
    with pytest.raises(AssertionError, match="not the target"):
        check_gaussian_moments(Stanley(step_size=0.5, th=0.5))


def test_mh_stanley_crosses_between_the_modes_and_reaches_their_weights() -> None:
    """`ebmkit.testing`'s mixture check: 0.25·N(−1, .45²) + 0.75·N(1, .45²) from reversed
    proportions; 3.0 crossings per chain observed (at least 2 required), P(X < t) at both
    modes and the split within 5 SE (observed |z| ≤ 0.7)."""
    report = check_mixture(CASES["metropolis"])
    assert report.crossings_per_chain > 2


def test_the_separated_mixture_of_earlier_tests_has_no_crossings() -> None:
    """0.2·N(−2, .5²) + 0.8·N(2, .5²), this file's mixture before `ebmkit.testing`: its
    barrier is e⁻⁸ below the modes, so MH-STANLEY crosses it about 10 times among 1000
    chains in 200 steps; the helper refuses to call weights checked there."""
    separated = MixtureTarget(weights=(0.2, 0.8), means=(-2.0, 2.0), stds=(0.5, 0.5))
    with pytest.raises(AssertionError, match="too few crossings"):
        check_mixture(CASES["metropolis"], target=separated, n_chains=1000, n_steps=200)


@pytest.mark.parametrize("name", list(CASES))
def test_every_case_keeps_the_sampler_contract(name: str) -> None:
    """Same generator seed → same chains, N + N steps through `Persistent` = 2N, shapes,
    gradient counts, no graph, foreign `owned` entries kept (`ebmkit.testing`)."""
    check_reproducible(CASES[name])
    check_continuation(CASES[name])
    check_contract(CASES[name])


# --------------------------------------------------------------------------------------
# 3. The ULA limit


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_below_the_threshold_stanley_is_core_langevin_bit_for_bit(dtype: torch.dtype) -> None:
    """th ≥ max|g| ⇒ Γ = εI: x' = x − ½εg + √ε ξ, core Langevin(ε/2, √ε) with the same ξ."""
    step_size = 0.5
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(5)).to(dtype)
    stanley = Stanley(step_size=step_size, th=1e3)
    langevin = ebmkit.create(
        "sampler", "Langevin", step_size=step_size / 2, noise_scale=math.sqrt(step_size)
    )
    state = stanley.init(x0, gaussian_energy)
    assert state.grad.abs().max() < 1e3
    assert torch.equal(state.extras["gamma"], torch.full_like(x0, step_size))
    one, _ = stanley.step(state, gaussian_energy, generator=torch.Generator().manual_seed(6))
    other, _ = langevin.step(
        langevin.init(x0, gaussian_energy),
        gaussian_energy,
        generator=torch.Generator().manual_seed(6),
    )
    assert torch.equal(one.x, other.x)
    runs = [
        sampler.sample(gaussian_energy, x0, 25, generator=torch.Generator().manual_seed(7)).x
        for sampler in (stanley, langevin)
    ]
    assert torch.equal(runs[0], runs[1])


# --------------------------------------------------------------------------------------
# 4. The bias of the unadjusted chain


def test_unadjusted_stanley_is_biased_and_mh_removes_the_bias() -> None:
    """N(0,1), th = 0.3, ε = 0.5, 20 000 chains from exact samples, 300 steps.

    Unadjusted: Var ≈ 2.05 (> 1.5). MH: |Var − 1| < 0.05 (the SE of a variance of 20 000
    i.i.d. normal draws is 0.010).
    """
    x0 = torch.randn(20_000, 1, generator=torch.Generator().manual_seed(8), dtype=F64)
    variances = {}
    for metropolis in (False, True):
        sampler = Stanley(step_size=0.5, th=0.3, metropolis=metropolis)
        generator = torch.Generator().manual_seed(9)
        result = sampler.sample(standard_normal_energy, x0, 300, generator=generator)
        variances[metropolis] = result.x.var().item()
        assert abs(result.x.mean().item()) < 0.05
    assert variances[False] > 1.5, variances
    assert abs(variances[True] - 1.0) < 0.05, variances


# --------------------------------------------------------------------------------------
# 5. The reduce modes


def test_reduce_modes_on_image_shaped_chains() -> None:
    generator = torch.Generator().manual_seed(10)
    grad = torch.randn(4, 3, 5, 6, generator=generator, dtype=F64)
    step_size, th = 0.7, 0.5
    gammas = {
        reduce: anisotropic_step_size(grad, step_size, th, reduce)
        for reduce in ("elementwise", "channel", "sample")
    }
    for gamma in gammas.values():
        assert gamma.shape == grad.shape
        assert ((gamma > 0) & (gamma <= step_size)).all()
    elementwise, channel, sample = gammas["elementwise"], gammas["channel"], gammas["sample"]
    assert torch.allclose(elementwise, hand_gamma(grad, step_size, th), rtol=0, atol=1e-15)
    assert (elementwise[:, 0] != elementwise[:, 1]).any()  # varies across channels too
    # channel: one γ per pixel (B, 1, H, W), from the L2 norm over the channels.
    pixel_norm = grad.norm(dim=1, keepdim=True)
    assert torch.allclose(channel, (step_size * th / pixel_norm.clamp(min=th)).expand_as(grad))
    assert (channel == channel[:, :1]).all()
    assert channel[:, 0].flatten(1).std(1).min() > 0  # but varies across pixels
    # sample: one γ per sample, from the L2 norm of its whole gradient.
    sample_norm = grad.flatten(1).norm(dim=1)
    expected = step_size * th / sample_norm.clamp(min=th)
    assert torch.allclose(sample, expected[:, None, None, None].expand_as(grad))
    assert (sample == sample[:, :1, :1, :1]).all()
    assert sample[:, 0, 0, 0].unique().numel() == 4


@pytest.mark.parametrize("reduce", ["elementwise", "channel", "sample"])
@pytest.mark.parametrize("metropolis", [False, True])
def test_image_chains_run_with_every_reduce(reduce: str, metropolis: bool) -> None:
    torch.manual_seed(0)
    energy = ebmkit.create("energy", "Conv", channels=(4, 8))
    x0 = torch.rand(5, 3, 8, 8) * 2 - 1
    sampler = Stanley(th=1e-3, step_size=1.0, reduce=reduce, metropolis=metropolis)
    result = sampler.sample(energy, x0, 3)
    assert result.x.shape == x0.shape and torch.isfinite(result.x).all()
    assert result.step_size.shape == (5,)
    assert ((result.step_size > 0) & (result.step_size <= 1.0)).all()
    assert (result.acceptance_rate is not None) == metropolis


# --------------------------------------------------------------------------------------
# 6. The contract


class Counting(nn.Module):
    """E(x) = ½|x|² + w·x with a learnable w; counts its evaluations (one per gradient)."""

    def __init__(self, dim: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(-1, 1, dim, dtype=dtype))
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        flat = x.flatten(1)
        return 0.5 * flat.square().sum(1) + flat @ self.weight


def test_registered_as_a_sampler_of_the_stanley_plugin() -> None:
    found = {c.name: c for c in ebmkit.components("sampler")}
    assert found["Stanley"].plugin == "stanley"
    assert found["Stanley"].factory is Stanley
    assert found["Stanley"].gin_name == "samplers.Stanley"
    info = ebmkit.get_registry().plugins["stanley"]
    assert info.ok and info.distribution == "ebmkit-stanley"
    sampler = ebmkit.create("sampler", "Stanley", th=0.2, metropolis=True)
    assert isinstance(sampler, Stanley) and sampler.th == 0.2 and sampler.metropolis


def test_gin_bindings_reach_the_sampler() -> None:
    import gin

    ebmkit.get_registry()
    gin.clear_config()
    try:
        gin.parse_config(
            textwrap.dedent(
                """
                samplers.Stanley.step_size = 0.5
                samplers.Stanley.th = 0.05
                samplers.Stanley.reduce = "channel"
                samplers.Stanley.metropolis = True
                samplers.Stanley.n_steps = 7
                """
            )
        )
        sampler = gin.get_configurable("samplers.Stanley")()
    finally:
        gin.clear_config()
    assert isinstance(sampler, Stanley)
    assert (sampler.step_size, sampler.th, sampler.reduce) == (0.5, 0.05, "channel")
    assert sampler.metropolis and sampler.n_steps == 7


SETTINGS = {
    "unadjusted": ({}, 0),
    "metropolis": ({"metropolis": True}, 1),  # like MALA: the gradient at the start
    "legacy": ({"legacy_code": True}, 0),
}


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("n_steps", [0, 1, 5])
def test_gradient_evaluations_are_counted_and_parameters_untouched(
    name: str, n_steps: int
) -> None:
    settings, extra = SETTINGS[name]
    torch.manual_seed(0)
    energy = Counting(3)
    x0 = torch.randn(4, 3, requires_grad=True)
    result = Stanley(th=0.5, step_size=0.1, **settings).sample(energy, x0, n_steps)
    assert result.n_grad_evals == energy.calls
    if n_steps > 0:
        assert result.n_grad_evals == n_steps + extra
    assert energy.weight.grad is None and x0.grad is None
    assert not result.x.requires_grad and result.x.grad_fn is None
    assert result.energy_trace.shape == (n_steps,)


def test_an_unadjusted_run_continues_with_step() -> None:
    """The last state of an unadjusted run has no gradient; `step` evaluates it once."""
    torch.manual_seed(0)
    energy = Counting(2)
    sampler = Stanley(th=0.5, step_size=0.1)
    result = sampler.sample(energy, torch.randn(4, 2), 3)
    assert result.state.grad is None
    calls = energy.calls
    state, info = sampler.step(result.state, energy)
    assert info.n_grad_evals == 2 and energy.calls == calls + 2
    assert state.grad is not None and "gamma" in state.extras


def test_step_info_reports_mean_gamma_and_acceptance() -> None:
    torch.manual_seed(0)
    x0 = torch.randn(6, 2, dtype=F64)
    for metropolis in (False, True):
        sampler = Stanley(th=0.5, step_size=0.5, metropolis=metropolis)
        state = sampler.init(x0, gaussian_energy)
        _, info = sampler.step(state, gaussian_energy)
        assert torch.allclose(info.step_size, state.extras["gamma"].mean(1))
        if metropolis:
            assert info.accepted.shape == (6,) and info.accepted.dtype == torch.bool
            assert ((info.acceptance_prob >= 0) & (info.acceptance_prob <= 1)).all()
        else:
            assert info.accepted is None and info.acceptance_prob is None


def test_legacy_code_update_matches_a_hand_computation() -> None:
    """The authors' image code: x ← x − ∇E + γ⊙(eps·ξ), γ = th / max(th, |g| over channels)."""
    torch.manual_seed(0)
    energy = Counting(3 * 4 * 4, F64)
    x0 = torch.randn(5, 3, 4, 4, dtype=F64)
    th = 1.5
    sampler = Stanley(legacy_code=True, th=th, reduce="channel")
    assert sampler.noise_scale == 0.01 and sampler.step_size == 1.0
    new_state, _ = sampler.step(
        sampler.init(x0, energy), energy, generator=torch.Generator().manual_seed(11)
    )
    xi = torch.randn(x0.shape, generator=torch.Generator().manual_seed(11), dtype=F64)
    grad = x0 + energy.weight.detach().reshape(1, 3, 4, 4)
    pixel_norm = torch.sqrt(grad[:, 0] ** 2 + grad[:, 1] ** 2 + grad[:, 2] ** 2).unsqueeze(1)
    gamma = th / torch.maximum(pixel_norm, torch.tensor(th, dtype=F64))
    assert (gamma < 1).any() and (gamma == 1).any()
    expected = x0 - grad + gamma * 0.01 * xi
    assert torch.allclose(new_state.x, expected, rtol=0, atol=1e-14)


def test_metropolis_with_clamp_stays_in_the_box() -> None:
    generator = torch.Generator().manual_seed(12)
    x0 = torch.rand(256, 3, generator=generator, dtype=F64) * 2 - 1
    sampler = Stanley(step_size=1.0, th=1.0, metropolis=True, clamp=(-1.0, 1.0))
    result = sampler.sample(standard_normal_energy, x0, 20, generator=generator)
    assert result.x.abs().max() <= 1.0
    assert 0.1 < result.acceptance_rate.mean() < 0.95


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"step_size": 0.0}, "step_size"),
        ({"step_size": -1.0}, "step_size"),
        ({"step_size": math.inf}, "step_size"),
        ({"step_size": math.nan}, "step_size"),
        ({"th": 0.0}, "th"),
        ({"th": -1e-3}, "th"),
        ({"reduce": "pixel"}, "reduce"),
        ({"n_steps": -1}, "n_steps"),
        ({"clamp": (1.0, -1.0)}, "clamp"),
        ({"legacy_code": True, "metropolis": True}, "legacy_code"),
        ({"noise_scale": 0.01}, "noise_scale"),
        ({"legacy_code": True, "noise_scale": -0.1}, "noise_scale"),
    ],
)
def test_bad_settings_raise_value_error(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Stanley(**settings)


def test_bad_types_and_shapes_raise() -> None:
    with pytest.raises(TypeError, match="metropolis"):
        Stanley(metropolis="yes")
    with pytest.raises(ValueError, match=r"\(B, 1\)"):
        Stanley().init(torch.zeros(4), lambda x: x.square())


def test_settings_are_validated_on_set_too() -> None:
    sampler = Stanley()
    with pytest.raises(ValueError, match="th"):
        sampler.th = 0.0
    assert attrs.evolve(sampler, th=0.5).th == 0.5


# The rings comparison configs (top-level gin/): one sampler swapped, nothing else.
GIN = Path(__file__).resolve().parents[3] / "gin"
RINGS = {"Langevin": GIN / "langevin_rings.gin", "Stanley": GIN / "stanley_rings.gin"}


def bindings(path: Path) -> set[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return {line for line in lines if line and not line.startswith("#")}


@pytest.mark.skipif(not GIN.is_dir(), reason="needs the repository's gin/ folder")
def test_rings_configs_differ_only_in_the_sampler() -> None:
    langevin, stanley = (bindings(path) for path in RINGS.values())
    assert "trainers.Contrastive.sampler = @samplers.Stanley()" in stanley
    for line in langevin ^ stanley:
        assert line.startswith(("samplers.", "trainers.Contrastive.sampler =")), line


@pytest.mark.skipif(not GIN.is_dir(), reason="needs the repository's gin/ folder")
def test_stanley_rings_config_runs(tmp_path: Path) -> None:
    import gin
    from ebmkit.cli import main  # the `ebmkit` command, in process

    out = tmp_path / "run"
    try:
        assert main(["run", str(RINGS["Stanley"]), "--rounds", "2", "--out", str(out)]) == 0
    finally:
        gin.clear_config()
    operative = (out / "operative_config.gin").read_text()
    assert "Stanley.th = 0.05" in operative and "Stanley.reduce = 'sample'" in operative
    assert (out / "checkpoints" / "round-00000002.pt").is_file()


def test_docstring_examples_run() -> None:
    failures, tried = doctest.testmod(kernel_module, optionflags=doctest.ELLIPSIS)
    assert tried > 0 and failures == 0


def test_scale_step_size_shrinks_gamma_and_noise_together() -> None:
    """ε ← f·ε scales Γ(x) by f and its noise Γ^(1/2) by sqrt(f); legacy_code refuses."""
    sampler = Stanley(step_size=1.0, th=0.1, reduce="elementwise")
    grad = torch.tensor([[0.05, 0.5, -2.0]], dtype=torch.float64)
    before = sampler.step_sizes(grad)
    sampler.scale_step_size(0.25)
    assert sampler.step_size == 0.25
    torch.testing.assert_close(sampler.step_sizes(grad), 0.25 * before, rtol=1e-15, atol=0)
    torch.testing.assert_close(
        sampler._noise_std(sampler.step_sizes(grad)), 0.5 * before.sqrt(), rtol=1e-15, atol=0
    )
    legacy = Stanley(legacy_code=True)
    with pytest.raises(ValueError, match="legacy_code=True has no step size in its drift"):
        legacy.scale_step_size(0.5)


# --------------------------------------------------------------------------------------
# Every `reduce` mode: detailed balance, invariance, and Γ that follows the settings


def hand_log_q_with(y: Tensor, x: Tensor, grad: Tensor, gamma: Tensor) -> Tensor:
    """log N(y; x − ½Γ∇E, Γ) summed per sample, with torch.distributions."""
    return Normal(x - 0.5 * gamma * grad, gamma.sqrt()).log_prob(y).flatten(1).sum(1)


def image_gaussian_energy(x: Tensor) -> Tensor:
    """A correlated Gaussian on (B, 3, 2) chains: channels mixed, positions independent."""
    mixing = torch.tensor([[1.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 1.0]], dtype=x.dtype)
    precision = torch.linalg.inv(mixing)
    return 0.5 * torch.einsum("bcp,cd,bdp->b", x, precision, x)


@pytest.mark.parametrize("reduce", ["elementwise", "channel", "sample"])
def test_detailed_balance_holds_for_every_reduce_mode(reduce: str) -> None:
    """π(z) q(y|z) α(z,y) = π(y) q(z|y) α(y,z) to 1e-10 on (B, 3, 2) chains, q written with
    torch.distributions from the mode's Γ; Γ(z) in the reverse density breaks it."""
    # th near each mode's typical gradient size, so both regimes of γ occur.
    step_size, th = 0.5, {"elementwise": 0.8, "channel": 2.0, "sample": 4.0}[reduce]
    generator = torch.Generator().manual_seed(4)
    z = 1.5 * torch.randn(1000, 3, 2, generator=generator, dtype=F64)
    y = 1.5 * torch.randn(1000, 3, 2, generator=generator, dtype=F64)
    sampler = Stanley(step_size=step_size, th=th, reduce=reduce, metropolis=True)
    state_z = sampler.init(z, image_gaussian_energy)
    state_y = sampler.init(y, image_gaussian_energy)
    gamma_z, gamma_y = state_z.extras["gamma"], state_y.extras["gamma"]
    assert (gamma_z == step_size).any() and (gamma_z < step_size).any()

    def gap(log_alpha_zy: Tensor, log_alpha_yz: Tensor, reverse_gamma: Tensor) -> Tensor:
        forward = (
            -image_gaussian_energy(z)
            + hand_log_q_with(y, z, state_z.grad, gamma_z)
            + log_alpha_zy.clamp(max=0.0)
        )
        backward = (
            -image_gaussian_energy(y)
            + hand_log_q_with(z, y, state_y.grad, reverse_gamma)
            + log_alpha_yz.clamp(max=0.0)
        )
        return (forward - backward).abs()

    right = gap(
        metropolis_log_ratio(state_z, state_y), metropolis_log_ratio(state_y, state_z), gamma_y
    )
    assert right.max() < 1e-10
    wrong = gap(
        metropolis_log_ratio(state_z, state_y), metropolis_log_ratio(state_y, state_z), gamma_z
    )
    assert (wrong > 1e-3).double().mean() > 0.5


@pytest.mark.parametrize("reduce", ["channel", "sample"])
def test_mh_stanley_reaches_the_gaussian_with_every_reduce_mode(reduce: str) -> None:
    """The Gaussian check of `ebmkit.testing` for the code's reductions (on 2-D chains the
    channel norm is the sample norm; the detailed-balance test above covers (B, 3, 2))."""
    check_gaussian_moments(Stanley(step_size=0.5, th=0.5, reduce=reduce, metropolis=True))


def test_the_mixture_check_has_power_against_unadjusted_stanley() -> None:
    """No MH on a position-dependent Γ: the chains cross (the check's minimum holds) but the
    mode weights are wrong, and `check_mixture` says so."""
    with pytest.raises(AssertionError, match="P\\(X <"):
        check_mixture(Stanley(step_size=0.5, th=0.5))


@pytest.mark.parametrize(
    "change", [{"step_size": 0.2}, {"th": 0.1}, {"reduce": "sample"}], ids=["eps", "th", "reduce"]
)
def test_gamma_follows_the_settings_between_manual_steps(change: dict) -> None:
    """A state made before ε, th or reduce changed: the next step's MH ratio uses Γ of the new
    settings, exactly as a freshly initialised state would."""
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    sampler = Stanley(step_size=0.5, th=0.5, metropolis=True)
    old_state = sampler.init(x, gaussian_energy)
    for name, value in change.items():
        setattr(sampler, name, value)
    fresh_state = sampler.init(x, gaussian_energy)
    assert not torch.equal(old_state.extras["gamma"], fresh_state.extras["gamma"])
    stepped_old, info_old = sampler.step(
        old_state, gaussian_energy, generator=torch.Generator().manual_seed(6)
    )
    stepped_fresh, info_fresh = sampler.step(
        fresh_state, gaussian_energy, generator=torch.Generator().manual_seed(6)
    )
    assert torch.equal(info_old.acceptance_prob, info_fresh.acceptance_prob)
    assert torch.equal(stepped_old.x, stepped_fresh.x)
    assert torch.equal(stepped_old.extras["gamma"], stepped_fresh.extras["gamma"])


def test_an_unknown_reduce_is_refused_listing_the_choices() -> None:
    with pytest.raises(ValueError) as refused:
        Stanley(reduce="pixel")
    assert str(refused.value) == (
        "reduce must be one of ('elementwise', 'channel', 'sample'), got 'pixel'"
    )
