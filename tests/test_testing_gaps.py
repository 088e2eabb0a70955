"""What a third-party kernel author hit (issue 16, item 5), each fixed and shown here: the
old private `_transition` API refused with what to write, `n_steps` / `step_size` named,
a kernel that writes only `step`, `ebmkit.uniform`, the continuation check catching an
`init` that ignores `previous` in a kernel that owns nothing, and the mixture check failing
MALA whose MH ratio drops the backward proposal density. The kernel of
docs/writing-a-plugin.md is run here, so the guide's code is the code that passes."""

from __future__ import annotations

import re
from pathlib import Path

import attrs
import pytest
import torch

import ebmkit
from ebmkit import (
    MALA,
    ChainState,
    Langevin,
    MarkovKernel,
    StepInfo,
    batch_view,
    energy_and_grad,
    gaussian_noise,
    metropolis_accept,
    select_chains,
)
from ebmkit.testing import (
    CARRIED_OWNED,
    STANDARD_GAUSSIAN,
    SamplerCase,
    check_continuation,
    check_contract,
    check_gaussian_moments,
    check_mixture,
    check_reproducible,
)

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "writing-a-plugin.md"


# --------------------------------------------------------------------------------------
# The old API and the two settings


def test_a_kernel_written_for_the_old_api_is_refused_when_its_class_is_made() -> None:
    with pytest.raises(TypeError, match=r"without its own `step`.*rename.*CHANGELOG\.md") as info:

        class OldBarker(MarkovKernel):  # what a plugin written before `step` looked like
            def _transition(self, state, energy, index, n_steps, generator, *, final):
                return state

    assert "context.last" in str(info.value) and "writing-a-plugin.md" in str(info.value)


def test_an_old_api_plugin_is_listed_broken_with_the_fix(tmp_path: Path) -> None:
    """Its import raises, so `ebmkit plugins` lists it as BROKEN with that message."""
    from helpers import on_sys_path, unique_tag, write_distribution

    tag = unique_tag()
    module = f"ebmkit_test_old_{tag}"
    source = f"""
        import ebmkit

        class OldKernel(ebmkit.MarkovKernel):
            def _transition(self, state, energy, index, n_steps, generator, *, final):
                return state

        @ebmkit.hookimpl
        def ebmkit_register(registry):
            registry.add("sampler", "Old{tag}", OldKernel)
    """
    write_distribution(tmp_path, module, "0.1", {f"old_{tag}": module}, {module: source})
    with on_sys_path(tmp_path):
        registry = ebmkit.reset_registry()
        error = registry.plugins[f"old_{tag}"].error
        assert error is not None and "without its own `step`" in error
        assert f"Old{tag}" not in {c.name for c in registry.components("sampler")}


@attrs.define(kw_only=True)
class NoStep(MarkovKernel):
    """A kernel that forgot `step` (and never had `_transition`)."""

    step_size: float = 0.1
    n_steps: int = 3


def test_a_kernel_without_step_says_which_method_to_write() -> None:
    with pytest.raises(NotImplementedError, match=r"NoStep is a MarkovKernel without its own"):
        NoStep().sample(STANDARD_GAUSSIAN.energy, torch.zeros(4, 2))


@attrs.define(kw_only=True)
class OddlyNamed(MarkovKernel):
    """A kernel holding its settings under other names (`h`, `steps`)."""

    h: float = 0.1
    steps: int = 3

    def step(self, state, energy, *, generator=None, context=None):
        return state, StepInfo(acceptance_prob=None, accepted=None, step_size=torch.tensor(self.h))


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda k: k.sample(STANDARD_GAUSSIAN.energy, torch.zeros(2, 2)), "n_steps"),
        (lambda k: k.current_step_size(), "step_size"),
        (lambda k: k.scale_step_size(0.5), "step_size"),
    ],
    ids=["sample", "current_step_size", "scale_step_size"],
)
def test_missing_settings_are_named(call, name: str) -> None:
    pattern = rf"OddlyNamed has no `{name}` attribute.*`n_steps`.*`step_size`"
    with pytest.raises(TypeError, match=pattern):
        call(OddlyNamed())
    OddlyNamed().sample(STANDARD_GAUSSIAN.energy, torch.zeros(2, 2), 2)  # n_steps given: fine


# --------------------------------------------------------------------------------------
# A kernel that writes only `step`, and the guide's kernel


@attrs.define(kw_only=True)
class BoxWalk(MarkovKernel):
    """Random-walk Metropolis with a uniform box proposal y = x + h·(2u − 1): only `step`
    is written (`MarkovKernel.init` evaluates E and ∇E and keeps `previous`'s owned)."""

    step_size: float = 0.8
    n_steps: int = 100

    def step(self, state, energy, *, generator=None, context=None):
        x = state.x
        proposal = x + self.step_size * ebmkit.uniform(
            x.shape, like=x, generator=generator, low=-1
        )
        with torch.no_grad():
            proposal_energy = energy(proposal)
        current = state.energy
        accepted, probability = metropolis_accept(current - proposal_energy, generator)
        new_state = ChainState(
            x=select_chains(accepted, proposal, x),
            energy=torch.where(accepted, proposal_energy, current),
            grad=None,  # ∇E at the new points is not known: None, never stale
            owned=state.owned,
        )
        info = StepInfo(
            acceptance_prob=probability,
            accepted=accepted,
            step_size=torch.tensor(self.step_size),
            n_grad_evals=0,
            n_energy_evals=1,
        )
        return new_state, info


def test_a_kernel_that_writes_only_step_passes_every_check() -> None:
    case = SamplerCase(name="box", sampler=BoxWalk(), exact=True)
    check_contract(case)
    check_reproducible(case)
    check_continuation(case)
    check_gaussian_moments(case, n_steps=300)


def guide_kernel() -> type:
    """The kernel shown in docs/writing-a-plugin.md, executed as it is printed there."""
    text = GUIDE.read_text()
    (source,) = re.findall(r"```python\n(# src/ebmkit_hmc/kernel\.py.*?)```", text, re.DOTALL)
    namespace: dict = {}
    exec(compile(source, str(GUIDE), "exec"), namespace)  # noqa: S102 - our own docs
    return namespace["HMC"]


@pytest.mark.slow
def test_the_guide_s_kernel_passes_the_checks_it_shows() -> None:
    """About 6 s: the printed ~30-line kernel, through the checks the guide runs."""
    kernel = guide_kernel()
    case = SamplerCase(name="guide", sampler=kernel(step_size=0.3, n_leapfrog=3), exact=True)
    check_contract(case)
    check_reproducible(case)
    check_continuation(case)
    check_gaussian_moments(case)
    assert check_mixture(case).crossings_per_chain > 2


# --------------------------------------------------------------------------------------
# ebmkit.uniform


def test_uniform_draws_from_the_generator_on_the_like_tensor() -> None:
    like = torch.zeros(3, dtype=torch.float64)
    before = torch.get_rng_state()
    first = ebmkit.uniform((4000,), like=like, generator=torch.Generator().manual_seed(0))
    again = ebmkit.uniform((4000,), like=like, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is untouched
    assert torch.equal(first, again) and first.dtype == torch.float64 and first.shape == (4000,)
    assert ((first >= 0) & (first < 1)).all() and abs(first.mean().item() - 0.5) < 0.02
    shifted = ebmkit.uniform((2, 5), like=like, low=-2.0, high=3.0)
    assert shifted.shape == (2, 5) and ((shifted >= -2) & (shifted < 3)).all()
    with pytest.raises(ValueError, match="low < high"):
        ebmkit.uniform((2,), like=like, low=1.0, high=1.0)


def test_uniform_matches_the_mh_test_draws() -> None:
    """`metropolis_accept` draws u the same way: one uniform per chain from the generator."""
    log_ratio = torch.log(torch.full((1000,), 0.3))
    accepted, _ = metropolis_accept(log_ratio, torch.Generator().manual_seed(5))
    u = ebmkit.uniform((1000,), like=log_ratio, generator=torch.Generator().manual_seed(5))
    assert torch.equal(accepted, torch.log(u) < log_ratio)


# --------------------------------------------------------------------------------------
# ebmkit.testing: the two gaps


@attrs.define(kw_only=True)
class ForgetfulLangevin(Langevin):
    """Langevin (owns nothing) whose `init` ignores the state it continues."""

    def init(self, x, energy, *, previous=None):
        return super().init(x, energy)


def test_continuation_check_fails_an_init_that_ignores_previous_in_a_kernel_owning_nothing():
    """Langevin owns no step size and no `owned` entry, so N + N = 2N holds bit for bit even
    when `init` drops `previous`; the planted entry is what catches it."""
    pattern = rf"owned\[{CARRIED_OWNED!r}\], planted .* is gone"
    with pytest.raises(AssertionError, match=pattern):
        check_continuation(ForgetfulLangevin(step_size=0.1))
    check_continuation(Langevin(step_size=0.1))


@attrs.define(kw_only=True)
class NoBackwardMALA(MALA):
    """MALA whose MH ratio drops the backward proposal density q(x|y): it accepts with
    π(y)/(π(x)·q(y|x)) (the bug a Barker port carried through every check but one)."""

    def step(self, state, energy, *, generator=None, context=None):
        x, step_size = state.x, state.step_size
        noise = batch_view(self._noise(step_size), x)
        mean = self._drift_mean(x, state.grad, step_size)
        proposal = mean + noise * gaussian_noise(x, generator)
        proposal_energy, proposal_grad = energy_and_grad(energy, proposal)
        log_forward = -((proposal - mean).square() / (2 * noise.square())).flatten(1).sum(1)
        log_ratio = state.energy - proposal_energy - log_forward
        accepted, probability = metropolis_accept(log_ratio, generator)
        new_state = ChainState(
            x=select_chains(accepted, proposal, x),
            energy=torch.where(accepted, proposal_energy, state.energy),
            grad=select_chains(accepted, proposal_grad, state.grad),
            step_size=step_size,
            owned=state.owned,
        )
        info = StepInfo(acceptance_prob=probability, accepted=accepted, step_size=step_size)
        return new_state, info


@pytest.mark.parametrize("step_size", [0.2, 0.1])
def test_mixture_check_fails_mala_without_the_backward_proposal_term(step_size: float) -> None:
    """The barrier's mass P(|X| < 0.3) catches it: z ≈ +10.6 at step 0.2 and +7.6 at step 0.1
    (seed 0; seeds 1–3: 11.0–12.7 and 7.6–8.9), where the three CDF points gave z 4.2–6.9
    at step 0.2 over seeds 0–3 (seed 1 passed them all). The Gaussian check fails it too
    (covariance z ≈ 10 at step 0.2)."""
    wrong = SamplerCase(
        name="no-backward", sampler=NoBackwardMALA(step_size=step_size), exact=True
    )
    with pytest.raises(AssertionError, match="mode weights or shapes are off") as info:
        check_mixture(wrong)
    barrier_z = float(re.search(r"z = \[[^]]*, ([-\d.]+)\]", str(info.value)).group(1))
    assert barrier_z > 6.5
    right = check_mixture(SamplerCase(name="mala", sampler=MALA(step_size=step_size), exact=True))
    assert abs(right.z[-1].item()) < 3  # the right ratio: the barrier's mass within z ≈ 1


def test_gaussian_check_fails_mala_without_the_backward_proposal_term() -> None:
    wrong = SamplerCase(name="no-backward", sampler=NoBackwardMALA(step_size=0.2), exact=True)
    with pytest.raises(AssertionError, match="not the target"):
        check_gaussian_moments(wrong)
