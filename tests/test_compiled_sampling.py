"""Samplers with `compile=True`: eager's samples within float rounding from the same random
numbers, one warning and eager's exact numbers where compiling cannot work, bindable in gin."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import TOY_GIN, run_cli, write_lines
from torch import Tensor

from ebmkit.energies.mlp import MLPEnergy
from ebmkit.records import SampleResult
from ebmkit.samplers.langevin import Langevin
from ebmkit.samplers.mala import MALA

SAMPLERS: dict[str, Callable[..., Langevin | MALA]] = {
    "Langevin": lambda **kw: Langevin(step_size=0.05, grad_clip=5.0, **kw),
    "MALA": lambda **kw: MALA(step_size=0.05, adapt_steps=2, **kw),
}


def tiny_energy() -> MLPEnergy:
    torch.manual_seed(0)
    return MLPEnergy(2, (16, 16))


def start(n_chains: int = 8) -> Tensor:
    return torch.randn(n_chains, 2, generator=torch.Generator().manual_seed(1))


def run(
    sampler: Langevin | MALA, energy: Callable[[Tensor], Tensor], x0: Tensor, n_steps: int = 4
) -> tuple[SampleResult, Tensor]:
    """Sample from seed 3 with the global RNG; (the result, the RNG state left behind)."""
    torch.manual_seed(3)
    result = sampler.sample(energy, x0, n_steps)
    return result, torch.get_rng_state()


def counting_compile(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Make torch.compile record what it is asked to compile (and still compile it)."""
    calls: list[object] = []
    real = torch.compile

    def compile_and_count(function: object, **options: object) -> object:
        calls.append(function)
        return real(function, **options)

    monkeypatch.setattr(torch, "compile", compile_and_count)
    return calls


def failing_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(function: object, **options: object) -> object:
        raise RuntimeError("no compiler backend on this test machine")

    monkeypatch.setattr(torch, "compile", refuse)


def compile_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(item.message) for item in record if "compile=True" in str(item.message)]


# -- compiled = eager within float rounding, same random numbers -----------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_compiled_sampling_matches_eager_and_draws_the_same_random_numbers(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    energy, x0 = tiny_energy(), start()
    eager, eager_rng = run(SAMPLERS[name](), energy, x0)
    calls = counting_compile(monkeypatch)
    sampler = SAMPLERS[name](compile=True)
    compiled, compiled_rng = run(sampler, energy, x0)
    assert torch.equal(compiled_rng, eager_rng)  # exactly the same draws, no more, no fewer
    torch.testing.assert_close(compiled.x, eager.x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled.energy_trace, eager.energy_trace, rtol=1e-5, atol=1e-6)
    assert compiled.n_grad_evals == eager.n_grad_evals
    if name == "MALA":
        assert torch.equal(compiled.acceptance_rate, eager.acceptance_rate)
        torch.testing.assert_close(compiled.step_size, eager.step_size, rtol=1e-5, atol=0.0)
    # Compiled once, for this (energy, shape, dtype, device), and reused: a second run with
    # the same chains compiles nothing; other chains (another shape) compile once more.
    run(sampler, energy, x0)
    assert len(calls) == 1
    run(sampler, energy, start(5))
    assert len(calls) == 2


# -- where compiling cannot work: one warning, eager's numbers --------------------------------


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_failing_torch_compile_warns_once_and_gives_the_eager_numbers(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    energy, x0 = tiny_energy(), start()
    eager, _ = run(SAMPLERS[name](), energy, x0)
    failing_compile(monkeypatch)
    sampler = SAMPLERS[name](compile=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        first, _ = run(sampler, energy, x0)
        second, _ = run(sampler, energy, start(5))  # a new key: tried again, not warned again
    messages = compile_warnings(record)
    assert len(messages) == 1, messages
    assert f"samplers.{name}(compile=True) runs its gradients eagerly" in messages[0]
    assert "no compiler backend on this test machine" in messages[0]
    assert torch.equal(first.x, eager.x)  # eager's very numbers, not merely close
    assert second.x.shape == (5, 2)
    with pytest.warns(UserWarning, match=f"samplers.{name}"):  # another instance warns anew
        run(SAMPLERS[name](compile=True), energy, x0)


def test_differentiable_sampling_runs_eagerly_after_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failing_compile(monkeypatch)  # never reached: differentiable chains do not try to compile
    energy = tiny_energy()
    x0 = start().requires_grad_(True)
    torch.manual_seed(3)
    eager = Langevin(step_size=0.05).sample(energy, x0, 3, differentiable=True)
    sampler = Langevin(step_size=0.05, compile=True)
    with pytest.warns(UserWarning, match="differentiable=True sampling keeps the autograd graph"):
        torch.manual_seed(3)
        compiled = sampler.sample(energy, x0, 3, differentiable=True)
    assert torch.equal(compiled.x, eager.x)
    (grad,) = torch.autograd.grad(compiled.x.sum(), x0)  # the graph reaches the start
    assert grad.abs().sum() > 0


def test_a_device_inductor_does_not_support_runs_eagerly_after_one_warning() -> None:
    sampler = Langevin(step_size=0.05, n_steps=3, compile=True)
    x0 = torch.zeros(4, 2, device="meta")
    with pytest.warns(UserWarning, match="does not generate code for device 'meta'"):
        result = sampler.sample(lambda x: 0.5 * x.square().sum(1), x0)
    assert result.x.device.type == "meta"


@pytest.mark.slow
def test_an_energy_torch_compile_cannot_trace_falls_back_with_eager_numbers() -> None:
    def branching(x: Tensor) -> Tensor:  # a Python branch on a value: no single graph
        scale = 0.5 if x.sum().item() > 0 else 1.0
        return scale * x.square().sum(1)

    x0 = start()
    eager, _ = run(Langevin(step_size=0.05), branching, x0)
    sampler = Langevin(step_size=0.05, compile=True)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        compiled, _ = run(sampler, branching, x0)
        run(sampler, branching, x0)
    messages = compile_warnings(record)
    assert len(messages) == 1, messages
    assert "torch.compile could not compile the energy" in messages[0]
    assert torch.equal(compiled.x, eager.x)


@pytest.mark.slow
def test_an_energy_that_fails_eagerly_too_raises_its_own_error_without_a_warning() -> None:
    def broken(x: Tensor) -> Tensor:
        raise RuntimeError("this energy is broken")

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        with pytest.raises(RuntimeError, match="this energy is broken"):
            Langevin(step_size=0.05, compile=True).sample(broken, start(), 2)
    assert compile_warnings(record) == []


# -- the setting ---------------------------------------------------------------------------


def test_compile_false_is_the_default_and_never_calls_torch_compile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    failing_compile(monkeypatch)  # would warn (an error under the suite's filterwarnings)
    for name, make in SAMPLERS.items():
        sampler = make()
        assert sampler.compile is False, name
        run(sampler, tiny_energy(), start())


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_compile_must_be_a_bool(name: str) -> None:
    with pytest.raises(TypeError, match="'compile' must be <class 'bool'>"):
        SAMPLERS[name](compile="yes")


@pytest.mark.slow
@pytest.mark.usefixtures("builtin_registry")
def test_compile_is_bindable_in_gin_and_a_run_compiles_its_chains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_lines(
        tmp_path,
        "tiny.gin",
        [
            f"include '{TOY_GIN}'",
            "trainers.Contrastive.dataset = @datasets.EightGaussians()",
            "trainers.Contrastive.sampler = @samplers.Langevin()",
            "trainers.Contrastive.initializer = @initializers.Noise()",
            "trainers.Contrastive.batch_size = 16",
            "energies.MLP.hidden = (16, 16)",
            "datasets.EightGaussians.n_samples = 64",
            "samplers.Langevin.step_size = 0.01",
            "samplers.Langevin.n_steps = 3",
            "experiment.eval_every = 100",
            "experiment.sample_every = 100",
        ],
    )
    calls = counting_compile(monkeypatch)
    out = tmp_path / "run"
    argv = ["run", str(config), "--out", str(out), "--rounds", "2"]
    status, stdout, stderr = run_cli(argv + ["--bind", "samplers.Langevin.compile = True"])
    assert status == 0, stderr
    assert json.loads(stdout)["rounds"] == 2
    assert "Langevin.compile = True" in (out / "operative_config.gin").read_text().splitlines()
    assert len(calls) == 1  # the run's chains (16 × 2, one energy) compiled once, reused
