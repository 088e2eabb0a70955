"""FlowMCMC (the Composite preset) and the plugin's contract: defaults, the tilted model, honest
costs (energy-only, gradient and flow evaluations counted against what really ran), stats,
registry and gin."""

from __future__ import annotations

import textwrap

import pytest
import torch
from flow_mcmc_fixtures import F64, SinhAffine, _Wrapped

import ebmkit
from ebmkit.flows import ElementwiseAffine
from ebmkit.samplers.composite import Composite
from ebmkit.samplers.mala import MALA
from ebmkit.testing import (
    GaussianTarget,
    GradientCounter,
    SamplerCase,
    check_gaussian_moments,
    gaussian_moment_report,
)
from ebmkit_flow_mcmc import ISIR, FlowIMH, FlowMCMC, NeutraMCMC, TiltedEnergy


def off_centre() -> ElementwiseAffine:
    return ElementwiseAffine(event_shape=None, loc=0.5, scale=1.5).freeze()


# --------------------------------------------------------------------------------------
# The preset


def test_flow_mcmc_is_a_composite_of_a_global_move_and_k_local_moves() -> None:
    flow = off_centre()
    sampler = FlowMCMC(flow=flow)
    assert isinstance(sampler, Composite)
    assert list(sampler.stages) == ["global", "local"]
    assert isinstance(sampler.stages["global"], FlowIMH)
    assert sampler.stages["global"].flow is flow
    assert sampler.repeats == {"local": 5}
    local = sampler.stages["local"]  # the reference code's MALA
    assert isinstance(local, MALA)
    assert (local.step_size, local.target_acceptance, local.adapt_steps) == (0.01, 0.75, 500)
    isir = FlowMCMC(flow=flow, global_move="isir", n_particles=6, local_steps=2)
    assert isinstance(isir.stages["global"], ISIR) and isir.stages["global"].n_particles == 6
    assert isir.repeats == {"local": 2}


def test_the_defaults_are_exact_on_a_gaussian() -> None:
    # 1000 chains × 150 steps: the default MALA adapts during its first 500 moves (100 steps)
    case = SamplerCase(name="defaults", sampler=FlowMCMC(flow=off_centre()), exact=True)
    report = check_gaussian_moments(case, n_chains=1000, n_steps=150)  # max |z| 1.5
    assert report.acceptance["global/acceptance"] > 0.2  # measured 0.36


def test_stats_name_each_stage() -> None:
    sampler = FlowMCMC(flow=off_centre(), local=MALA(step_size=0.2), local_steps=3)
    result = sampler.sample(
        lambda x: 0.5 * x.square().sum(1), torch.zeros(16, 2), 4, generator=torch.Generator()
    )
    assert set(result.stats) == {
        "global/acceptance",
        "global/flow_evals",
        "local/acceptance",
        "local/step_size",
        "flow_evals",
    }
    assert all(bool(torch.isfinite(value).all()) for value in result.stats.values())
    assert sampler.current_step_size() == 0.2
    sampler.scale_step_size(0.5)  # the local stage's step; the global move has none
    assert sampler.local.step_size == 0.1
    with pytest.raises(ValueError, match="no step size to scale"):
        FlowIMH(flow=off_centre()).scale_step_size(0.5)


# --------------------------------------------------------------------------------------
# The tilted model p ∝ λ·exp(−E)

TILT_FLOW = off_centre()


class TiltedGaussian(GaussianTarget):
    """E(x) = ½(x − m)ᵀΣ⁻¹(x − m) + log λ(x): tilted by λ, the model is exactly N(m, Σ)."""

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        return super().energy(x) + TILT_FLOW.log_prob(x)


TILTED = TiltedGaussian([1.0, -0.5], [[1.0, 0.6], [0.6, 1.0]])


def tilted_case(tilt: bool) -> SamplerCase:
    sampler = FlowMCMC(flow=TILT_FLOW, local=MALA(step_size=0.2), local_steps=2, tilt=tilt)
    return SamplerCase(name=f"tilt={tilt}", sampler=sampler, exact=True)


def test_the_tilted_sampler_samples_lambda_times_exp_minus_e() -> None:
    report = check_gaussian_moments(tilted_case(True), target=TILTED, n_chains=2000, n_steps=60)
    assert report.acceptance["global/acceptance"] > 0.3  # max |z| 1.4
    # Power: the untilted sampler on the same energy samples exp(−E), another law.
    untilted = gaussian_moment_report(tilted_case(False), target=TILTED, n_chains=2000, n_steps=60)
    assert not untilted.passed and untilted.max_z > 10, str(untilted)  # measured |z| 78


def test_on_the_tilted_energy_the_flow_cancels_from_the_imh_ratio() -> None:
    # E ≡ 0 tilted by λ is λ itself: log A = E(x) − E(x') = 0 exactly, every move accepted.
    flow = SinhAffine.seeded(2, seed=5).freeze()
    tilted = TiltedEnergy(lambda x: torch.zeros(x.shape[0], dtype=x.dtype), flow)
    x0 = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    result = FlowIMH(flow=flow).sample(tilted, x0, 5, generator=torch.Generator())
    assert bool((result.acceptance_rate == 1).all())
    # ... while on E ≡ 0 untilted (the flat target, not λ) the same proposals are rejected
    # at times (acceptance 0.59): the kernel did use the tilt, not some constant ratio
    flat = FlowIMH(flow=flow).sample(tilted.energy, x0, 5, generator=torch.Generator())
    assert flat.acceptance_rate.mean().item() < 0.9


def test_model_energy_is_e_minus_log_lambda_with_tilt() -> None:
    flow = off_centre()
    energy = torch.nn.Linear(2, 1)

    def energy_function(x: torch.Tensor) -> torch.Tensor:
        return energy(x).squeeze(-1)

    x = torch.randn(5, 2)
    tilted = FlowMCMC(flow=flow, tilt=True).model_energy(energy_function)
    torch.testing.assert_close(tilted(x), energy_function(x) - flow.log_prob(x))
    assert FlowMCMC(flow=flow).model_energy(energy_function) is energy_function


def test_a_run_with_tilt_scores_the_tilted_model() -> None:
    from ebmkit.initializers.noise import Noise
    from ebmkit.trainers.contrastive import Contrastive

    flow = off_centre()
    energy = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Flatten(0))
    data = torch.randn(16, 2)
    x = torch.randn(5, 2)
    for tilt, expected in ((True, energy(x) - flow.log_prob(x)), (False, energy(x))):
        trainer = Contrastive(
            energy=energy,
            sampler=FlowMCMC(flow=flow, tilt=tilt),
            initializer=Noise(shape=(2,)),
            dataset=data,
            batch_size=8,
        )
        with torch.no_grad():
            torch.testing.assert_close(trainer.model_energy()(x), expected.detach())
        # the flow is the user's Learnable: found once, under the sampler, trained by the trainer
        assert list(trainer.all_learnables) == ["sampler.flow"]
        assert trainer.all_learnables["sampler.flow"] is flow


# --------------------------------------------------------------------------------------
# Honest costs


class CountingFlow(_Wrapped):
    """The wrapped flow, counting its passes (forward or inverse, one batch each)."""

    def __init__(self, flow) -> None:
        super().__init__(flow)
        self.passes = 0

    def forward(self, x):
        self.passes += 1
        return self.inner(x)

    def inverse(self, z):
        self.passes += 1
        return self.inner.inverse(z)


def samplers_on(flow) -> dict[str, object]:
    local = MALA(step_size=0.2)
    return {
        "imh": FlowIMH(flow=flow),
        "isir": ISIR(flow=flow, n_particles=3),
        "neutra": NeutraMCMC(flow=flow, local=local),
        "flow-mcmc": FlowMCMC(flow=flow, local=local, local_steps=2),
        "flow-mcmc-isir": FlowMCMC(flow=flow, local=local, global_move="isir"),
        "flow-mcmc-tilt": FlowMCMC(flow=flow, local=local, local_steps=2, tilt=True),
    }


@pytest.mark.parametrize("name", list(samplers_on(off_centre())))
def test_costs_are_what_the_energy_and_the_flow_really_did(name: str) -> None:
    flow = CountingFlow(off_centre())
    sampler = samplers_on(flow)[name]
    energy = GradientCounter(2)
    start = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    first = sampler.sample(energy, start, 3, generator=torch.Generator().manual_seed(1))
    # a continued run (latents carried): init's extra pass counted too
    second = sampler.sample(
        energy, ebmkit.InitBatch(x=first.x, state=first.state), 2, generator=torch.Generator()
    )
    results = (first, second)
    assert sum(result.n_grad_evals for result in results) == energy.gradients
    assert sum(result.n_energy_evals for result in results) == energy.energy_only
    assert sum(result.n_flow_evals for result in results) == flow.passes
    assert flow.passes > 0


# --------------------------------------------------------------------------------------
# Registry and gin


def test_registered_as_samplers_of_the_flow_mcmc_plugin() -> None:
    found = {component.name: component for component in ebmkit.components("sampler")}
    for name, factory in [
        ("FlowIMH", FlowIMH),
        ("ISIR", ISIR),
        ("FlowMCMC", FlowMCMC),
        ("NeutraMCMC", NeutraMCMC),
    ]:
        assert found[name].plugin == "flow_mcmc"
        assert found[name].factory is factory
        assert found[name].gin_name == f"samplers.{name}"
    info = ebmkit.get_registry().plugins["flow_mcmc"]
    assert info.ok and info.distribution == "ebmkit-flow-mcmc"
    sampler = ebmkit.create("sampler", "FlowMCMC", flow=off_centre(), local_steps=3)
    assert isinstance(sampler, FlowMCMC) and sampler.repeats == {"local": 3}


def test_gin_assembles_flow_mcmc_with_its_flow_and_local_kernel() -> None:
    import gin

    ebmkit.get_registry()
    gin.clear_config()
    try:
        gin.parse_config(
            textwrap.dedent(
                """
                samplers.FlowMCMC.flow = @flows.Affine()
                samplers.FlowMCMC.local = @samplers.MALA()
                samplers.FlowMCMC.global_move = "isir"
                samplers.FlowMCMC.n_particles = 8
                samplers.FlowMCMC.local_steps = 3
                samplers.FlowMCMC.tilt = True
                samplers.FlowMCMC.n_steps = 7
                samplers.MALA.step_size = 0.05
                flows.Affine.dim = 2
                flows.Affine.fit_on = "samples"
                """
            )
        )
        sampler = gin.get_configurable("samplers.FlowMCMC")()
    finally:
        gin.clear_config()
    assert isinstance(sampler, FlowMCMC) and sampler.tilt and sampler.n_steps == 7
    assert isinstance(sampler.stages["global"], ISIR)
    assert sampler.stages["global"].n_particles == 8
    assert sampler.stages["local"].step_size == 0.05
    assert sampler.repeats == {"local": 3}
    assert sampler.flow.fit_on == "samples"
