"""Chains that continue: the Persistent bank, init(previous=...), differentiable chains, stages."""

import math

import pytest
import torch

from ebmkit import ChainState, InitBatch, energy_and_grad
from ebmkit.energies.mlp import MLPEnergy
from ebmkit.initializers.noise import Noise
from ebmkit.initializers.persistent import Persistent
from ebmkit.initializers.replay import Replay
from ebmkit.samplers.composite import Composite
from ebmkit.samplers.langevin import Langevin
from ebmkit.samplers.mala import MALA
from ebmkit.testing import MixtureTarget, finished_round


def small_energy(seed: int = 0) -> MLPEnergy:
    torch.manual_seed(seed)
    return MLPEnergy(hidden=(16, 16))


def test_mala_through_persistent_four_rounds_of_50_equal_one_run_of_200_bit_for_bit():
    energy = small_energy()
    sampler = MALA(step_size=0.05, adapt_steps=120)  # adaptation spans rounds 1-3
    bank = Persistent(n_chains=64, start=Noise(shape=(2,), low=-2, high=2), shuffle=False)
    generator = torch.Generator().manual_seed(3)
    for index in range(1, 5):
        init = bank.sample(64)
        if index == 1:
            x0 = init.x.clone()
        result = sampler.sample(energy, init, 50, generator=generator)
        bank.update(finished_round(index, init, result))
    whole = sampler.sample(energy, x0, 200, generator=torch.Generator().manual_seed(3))
    assert torch.equal(bank.positions, whole.x)
    assert torch.equal(bank.step_sizes, whole.state.step_size)
    assert torch.equal(bank.owned["age"], whole.state.owned["age"])
    assert torch.equal(result.state.energy, whole.state.energy)
    # The adaptation did move the step sizes (not a trivially constant comparison).
    assert not torch.allclose(whole.state.step_size, torch.full((64,), 0.05))
    assert int(whole.state.owned["age"].max()) == 200


def test_continued_chains_use_the_energy_as_it_is_now():
    energy = small_energy()
    sampler = MALA(step_size=0.05)
    bank = Persistent(n_chains=32, start=Noise(shape=(2,)), shuffle=False)
    init = bank.sample(32)
    result = sampler.sample(energy, init, 10)
    bank.update(finished_round(1, init, result))
    old_energy = result.state.energy.clone()
    with torch.no_grad():
        for parameter in energy.parameters():
            parameter.add_(0.1)  # what the energy's optimizer step does between rounds
    init = bank.sample(32)
    continued = sampler.sample(energy, init, 0)  # zero steps: the state init(previous=) made
    fresh_energy, fresh_grad = energy_and_grad(energy, init.x)
    assert torch.equal(continued.state.energy, fresh_energy)
    assert torch.equal(continued.state.grad, fresh_grad)
    assert not torch.allclose(continued.state.energy, old_energy)
    assert torch.equal(continued.state.step_size, result.state.step_size)


def test_a_pass_visits_every_chain_once_and_a_straddling_batch_holds_no_chain_twice():
    torch.manual_seed(0)
    bank = Persistent(n_chains=10, start=Noise(shape=(1,)))
    batches = [bank.sample(4).indices for _ in range(5)]  # 20 draws = two passes
    for batch in batches:
        assert len(set(batch.tolist())) == 4
    drawn = torch.cat(batches).tolist()
    assert sorted(drawn[:10]) == list(range(10))  # pass 1 ends inside the third batch
    assert sorted(drawn[10:]) == list(range(10))  # pass 2
    assert drawn[:10] != drawn[10:]  # reshuffled


def test_a_restored_bank_draws_the_same_chains_with_the_same_states():
    torch.manual_seed(0)
    energy = small_energy()
    sampler = MALA(step_size=0.05, adapt_steps=5)
    bank = Persistent(n_chains=12, start=Noise(shape=(2,)))
    for index in range(1, 4):
        init = bank.sample(5)
        bank.update(finished_round(index, init, sampler.sample(energy, init, 3)))
    copy = Persistent(n_chains=12, start=Noise(shape=(2,)))
    copy.load_state_dict(bank.state_dict())
    rng = torch.get_rng_state()
    one = bank.sample(5)
    torch.set_rng_state(rng)
    other = copy.sample(5)
    assert torch.equal(one.indices, other.indices) and torch.equal(one.x, other.x)
    assert torch.equal(one.state.step_size, other.state.step_size)
    assert torch.equal(one.state.owned["age"], other.state.owned["age"])


def test_chains_not_run_yet_start_with_the_configured_step_size():
    energy = small_energy()
    sampler = MALA(step_size=0.05, adapt_steps=10)
    bank = Persistent(n_chains=8, start=Noise(shape=(2,)), shuffle=False)
    init = bank.sample(4)
    bank.update(finished_round(1, init, sampler.sample(energy, init, 10)))
    assert bank.step_sizes[4:].isnan().all()  # not set yet
    assert bank.owned["age"][4:].eq(0).all()
    init = bank.sample(4)  # chains 4-7, never run
    state = sampler.init(init.x, energy, previous=init.state)
    assert torch.equal(state.step_size, torch.full((4,), 0.05))


def test_bank_errors_name_the_setting():
    bank = Persistent(n_chains=4, start=Noise(shape=(2,)))
    with pytest.raises(ValueError, match="n_chains >= the batch size"):
        bank.sample(5)
    init = Noise(shape=(2,)).sample(4)
    result = Langevin(step_size=0.1).sample(lambda x: x.square().sum(1), init.x, 1)
    with pytest.raises(ValueError, match="InitBatch its own `sample` returned"):
        bank.update(finished_round(1, init, result))
    state = bank.state_dict()
    with pytest.raises(ValueError, match="n_chains = 5"):
        Persistent(n_chains=5, start=Noise(shape=(2,))).load_state_dict(
            {**state, "positions": torch.zeros(4, 2)}
        )


def test_replay_hands_over_no_state_so_its_chains_start_afresh():
    torch.manual_seed(0)
    init = Replay(noise=Noise(shape=(2,)), capacity=16).sample(8)
    assert init.state is None


def test_a_continued_state_of_other_chains_is_refused():
    state = MALA(step_size=0.1).init(torch.zeros(4, 2), lambda x: x.square().sum(1))
    with pytest.raises(ValueError, match="holds 4 chains but the start x holds 3"):
        MALA(step_size=0.1).sample(
            lambda x: x.square().sum(1), InitBatch(x=torch.zeros(3, 2), state=state), 1
        )


# Differentiable chains ---------------------------------------------------------------------


@pytest.mark.parametrize("n_steps", [1, 7, 25])
def test_differentiable_langevin_gradient_of_the_final_state_is_one_minus_ha_to_the_k(n_steps):
    a, h = 3.0, 0.05
    x0 = torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(6, 1).requires_grad_(True)
    sampler = Langevin(step_size=h)
    result = sampler.sample(
        lambda x: 0.5 * a * x.square().sum(1),
        x0,
        n_steps,
        generator=torch.Generator().manual_seed(0),
        differentiable=True,
    )
    (gradient,) = torch.autograd.grad(result.x.sum(), x0)
    expected = torch.full_like(gradient, (1 - h * a) ** n_steps)
    torch.testing.assert_close(gradient, expected, atol=1e-6, rtol=0)


def test_differentiable_chains_reach_the_energys_parameters_as_finite_differences_say():
    stiffness = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))
    x0 = torch.ones(5, 2, dtype=torch.float64)

    def final_mean(a: torch.Tensor, differentiable: bool) -> torch.Tensor:
        result = MALA(step_size=0.1).sample(
            lambda x: 0.5 * a * x.square().sum(1),
            x0,
            6,
            generator=torch.Generator().manual_seed(1),
            differentiable=differentiable,
        )
        return result.x.square().mean()

    (gradient,) = torch.autograd.grad(final_mean(stiffness, True), stiffness)
    step = 1e-6
    with torch.no_grad():
        plus = final_mean(stiffness + step, False)
        minus = final_mean(stiffness - step, False)
    torch.testing.assert_close(gradient, (plus - minus) / (2 * step), atol=1e-5, rtol=1e-4)
    assert gradient.abs() > 1e-3


def test_the_default_keeps_no_graph():
    energy = small_energy()
    x0 = torch.randn(8, 2, requires_grad=True)
    result = MALA(step_size=0.05).sample(energy, x0, 3)
    assert not result.x.requires_grad and result.x.grad_fn is None
    assert result.state.grad.grad_fn is None and result.state.energy.grad_fn is None
    assert all(p.grad is None for p in energy.parameters())


# Kernels that compose -------------------------------------------------------------------------


def test_a_kernel_that_moves_x_drops_the_caches_it_does_not_recompute():
    energy = lambda x: 0.5 * x.square().sum(1)  # noqa: E731
    value, grad = energy_and_grad(energy, torch.ones(4, 2))
    stale = ChainState(
        x=torch.ones(4, 2),
        energy=value,
        grad=grad,
        extras={"gamma": torch.ones(4, 2)},
        owned={"dual": torch.zeros(4, 2)},
    )
    for kernel in (Langevin(step_size=0.1), MALA(step_size=0.1)):
        moved, _ = kernel.step(stale, energy)
        assert moved.extras == {}, type(kernel).__name__
        assert torch.equal(moved.owned["dual"], torch.zeros(4, 2))  # owned by another kernel


def test_composite_keeps_each_stages_own_state_apart_and_reports_both_stages():
    energy = lambda x: 0.5 * x.square().sum(1)  # noqa: E731
    kernel = Composite(
        stages={
            "ula": Langevin(step_size=0.05),
            "mala": MALA(step_size=0.5, adapt_steps=20),
        }
    )
    result = kernel.sample(
        energy, torch.zeros(256, 2), 30, generator=torch.Generator().manual_seed(0)
    )
    assert set(result.stats) == {"ula/step_size", "mala/step_size", "mala/acceptance"}
    assert result.stats["mala/acceptance"].shape == (256,)
    # Each stage's init evaluates ∇E (2), then ULA skips no gradient (it is not last): 2 a step.
    assert result.n_grad_evals == 2 + 30 * 2
    owned = result.state.owned
    assert set(owned) == {"mala/step_size", "mala/age"}
    assert int(owned["mala/age"].max()) == 20 + 10 and not torch.allclose(
        owned["mala/step_size"], torch.full((256,), 0.5)
    )
    # Continuing keeps adapting from where it stopped (ages go on, not back to 0).
    again = kernel.sample(energy, InitBatch(x=result.x, state=result.state), 5)
    assert int(again.state.owned["mala/age"].max()) == 35
    assert math.isclose(kernel.current_step_size(), 0.05)


MIXTURE = MixtureTarget(weights=(0.25, 0.75), means=(-1.5, 1.5), stds=(0.5, 0.5))


@pytest.mark.slow
def test_persistent_chains_reach_the_mixture_weight_that_fresh_chains_with_the_same_budget_miss():
    # benchmarks/persistent_vs_fresh.py: persistent 0.244 ± 0.010, fresh 0.013 ± 0.003 (5 seeds).
    torch.manual_seed(0)
    right_mode = Noise(shape=(1,), distribution="gaussian", mean=1.5, std=0.5)
    weights = {}
    for name, initializer in {
        "persistent": Persistent(n_chains=2048, start=right_mode),
        "fresh": right_mode,
    }.items():
        sampler = MALA(step_size=0.2)
        for index in range(1, 121):
            init = initializer.sample(2048)
            result = sampler.sample(MIXTURE.energy, init, 20)
            initializer.update(finished_round(index, init, result))
        weights[name] = float((result.x[:, 0] < 0).float().mean())
    assert abs(weights["persistent"] - 0.25) < 0.03, weights
    assert abs(weights["fresh"] - 0.25) > 0.2, weights
