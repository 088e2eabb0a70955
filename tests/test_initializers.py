"""Initializers: noise moments, the replay buffer's reinitialisation and write-back, data + noise.

Statistical checks compare i.i.d. draws against exact moments with a tolerance of Z standard
errors (binomial SE for the replay restart fraction).
"""

from __future__ import annotations

import math

import pytest
import torch

from ebmkit.initializers.data import Data
from ebmkit.initializers.noise import Noise
from ebmkit.initializers.replay import Replay
from ebmkit.records import ChainState, InitBatch, Round, SampleResult
from ebmkit.testing import finished_round

Z = 5.0


# --------------------------------------------------------------------------------------
# Noise


def test_noise_uniform_range_and_moments() -> None:
    torch.manual_seed(0)
    low, high, n = -2.0, 3.0, 50_000
    batch = Noise(shape=(2, 3), low=low, high=high).sample(n)
    x = batch.x
    assert x.shape == (n, 2, 3) and x.dtype == torch.float32
    assert batch.indices is None and batch.latents is None
    assert x.min() >= low and x.max() < high
    variance = (high - low) ** 2 / 12  # of U(low, high)
    se_mean = math.sqrt(variance / n)
    assert (x.double().mean(0) - (low + high) / 2).abs().max() < Z * se_mean
    # Var of the sample variance of U: (μ4 − σ⁴)/n with μ4 = (high − low)⁴/80.
    se_var = math.sqrt(((high - low) ** 4 / 80 - variance**2) / n)
    assert (x.double().var(0) - variance).abs().max() < Z * se_var
    # Each of the 6 coordinates fills the box: no cell of a 10-bin histogram is empty.
    counts = torch.histc(x[:, 0, 0], bins=10, min=low, max=high)
    assert counts.min() > 0.09 * n


def test_noise_gaussian_moments() -> None:
    torch.manual_seed(0)
    mean, std, n = 1.5, 0.25, 50_000
    x = Noise(shape=(4,), distribution="gaussian", mean=mean, std=std).sample(n).x.double()
    assert x.shape == (n, 4)
    assert (x.mean(0) - mean).abs().max() < Z * std / math.sqrt(n)
    assert (x.var(0) / std**2 - 1).abs().max() < Z * math.sqrt(2 / n)
    # Not uniform: about 4.55 % of a Gaussian lies beyond 2 std.
    beyond = ((x - mean).abs() > 2 * std).double().mean().item()
    p = math.erfc(2 / math.sqrt(2))
    assert abs(beyond - p) < Z * math.sqrt(p * (1 - p) / (4 * n))


def test_noise_default_is_the_image_box() -> None:
    torch.manual_seed(0)
    x = Noise(shape=(3, 8, 8)).sample(16).x
    assert x.shape == (16, 3, 8, 8)
    assert x.min() >= -1 and x.max() < 1
    torch.manual_seed(0)
    assert torch.equal(Noise(shape=(3, 8, 8)).draw(16), x)  # `sample` is `draw` in a batch


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (2,), "low": 1.0, "high": 1.0},
        {"shape": (2,), "low": 2.0, "high": -1.0},
        {"shape": (2,), "distribution": "gaussian", "std": 0.0},
        {"shape": (2,), "std": -1.0},
        {"shape": (2,), "distribution": "laplace"},
        {"shape": ()},
        {"shape": (3, 0)},
    ],
    ids=["empty-box", "reversed-box", "std-0", "std-neg", "unknown-law", "no-shape", "zero-size"],
)
def test_noise_bad_arguments_raise(kwargs: dict) -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError):
        Noise(**kwargs)


# --------------------------------------------------------------------------------------
# Replay


def marked_replay(capacity: int, reinit_prob: float = 0.05) -> Replay:
    """A replay buffer whose slot i holds the constant 10 + i: never inside the noise box."""
    replay = Replay(noise=Noise(shape=(2,)), capacity=capacity, reinit_prob=reinit_prob)
    marks = 10.0 + torch.arange(capacity, dtype=torch.float32)
    replay.load_state_dict({"buffer": marks[:, None].expand(capacity, 2).clone()})
    return replay


def test_replay_reinitialises_the_stated_fraction() -> None:
    torch.manual_seed(0)
    capacity, n, p = 500, 20_000, 0.05
    replay = marked_replay(capacity, p)
    batch = replay.sample(n)
    flags = batch.extras["reinitialized"]
    assert batch.x.shape == (n, 2) and batch.indices.shape == (n,) and flags.shape == (n,)
    assert flags.dtype == torch.bool
    assert ((batch.indices >= 0) & (batch.indices < capacity)).all()
    # The flag's rate is the restart probability, within binomial error ...
    assert abs(flags.double().mean().item() - p) < Z * math.sqrt(p * (1 - p) / n)
    # ... and, independently, the rows that differ from their buffer slot are exactly those.
    differs = (batch.x != replay.buffer[batch.indices]).any(1)
    assert torch.equal(differs, flags)
    assert (batch.x[flags].abs() < 1).all()  # restarted rows are fresh noise
    assert torch.equal(batch.x[~flags], replay.buffer[batch.indices[~flags]])
    # Slots are drawn from the whole buffer: each of the 500 slots about 40 times.
    assert torch.bincount(batch.indices, minlength=capacity).min() > 0  # P(empty) ≈ e⁻⁴⁰


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_replay_reinit_probability_extremes(p: float) -> None:
    torch.manual_seed(0)
    replay = marked_replay(50, p)
    batch = replay.sample(400)
    assert batch.extras["reinitialized"].all() == (p == 1.0)
    assert batch.extras["reinitialized"].any() == (p == 1.0)


def test_replay_starts_full_of_noise() -> None:
    torch.manual_seed(0)
    replay = Replay(noise=Noise(shape=(3,)), capacity=64)
    assert replay.state_dict() == {"buffer": None}
    replay.sample(8)
    assert replay.buffer.shape == (64, 3)
    assert replay.buffer.min() >= -1 and replay.buffer.max() < 1


def make_round(init: InitBatch, x: torch.Tensor) -> Round:
    """The smallest Round a Replay.update reads: its InitBatch and the sampler's final x."""
    result = SampleResult(
        x=x,
        state=ChainState(x=x, energy=None, grad=None),
        acceptance_rate=None,
        n_grad_evals=0,
        energy_trace=torch.zeros(0),
        step_size=torch.tensor(0.1),
    )
    return finished_round(1, init, result)


def test_replay_update_writes_final_states_to_their_slots() -> None:
    torch.manual_seed(0)
    capacity, n = 100, 60
    replay = marked_replay(capacity)
    before = replay.buffer.clone()
    batch = replay.sample(n)
    final = -100.0 - torch.arange(n, dtype=torch.float32)[:, None].expand(n, 2)  # row j: −100−j
    replay.update(make_round(batch, final.requires_grad_()))
    assert not replay.buffer.requires_grad
    touched = torch.zeros(capacity, dtype=torch.bool)
    touched[batch.indices] = True
    assert torch.equal(replay.buffer[~touched], before[~touched])  # other slots untouched
    for slot in batch.indices.unique().tolist():
        rows = (batch.indices == slot).nonzero().flatten()  # chains drawn from this slot
        written = int(-100 - replay.buffer[slot, 0].item())
        assert written in rows.tolist()  # one of them (a slot drawn twice keeps one)
        assert torch.equal(replay.buffer[slot], final[written].detach())


def test_replay_update_needs_indices() -> None:
    torch.manual_seed(0)
    replay = marked_replay(10)
    with pytest.raises(ValueError, match="InitBatch"):
        replay.update(make_round(InitBatch(x=torch.zeros(3, 2)), torch.zeros(3, 2)))


def test_replay_state_dict_round_trip() -> None:
    torch.manual_seed(0)
    replay = Replay(noise=Noise(shape=(2,)), capacity=32)
    replay.sample(4)
    state = replay.state_dict()
    assert torch.equal(state["buffer"], replay.buffer)
    state["buffer"].add_(1.0)  # the state dict is a copy ...
    assert not torch.equal(state["buffer"], replay.buffer)
    state = replay.state_dict()

    restored = Replay(noise=Noise(shape=(2,)), capacity=32)
    restored.load_state_dict(state)
    assert torch.equal(restored.buffer, replay.buffer)
    torch.manual_seed(5)
    a = replay.sample(16)
    torch.manual_seed(5)
    b = restored.sample(16)
    assert torch.equal(a.x, b.x) and torch.equal(a.indices, b.indices)


def test_replay_load_rejects_wrong_capacity() -> None:
    torch.manual_seed(0)
    state = {"buffer": torch.zeros(32, 2)}
    with pytest.raises(ValueError, match=r"Replay\.capacity"):
        Replay(noise=Noise(shape=(2,)), capacity=16).load_state_dict(state)


@pytest.mark.parametrize("kwargs", [{"capacity": 0}, {"reinit_prob": -0.1}, {"reinit_prob": 1.5}])
def test_replay_bad_arguments_raise(kwargs: dict) -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError):
        Replay(noise=Noise(shape=(2,)), **kwargs)


# --------------------------------------------------------------------------------------
# Data


def labelled_points(n: int) -> list[tuple[torch.Tensor, int]]:
    """Point i is (i, −2i), labelled i % 3."""
    return [(torch.tensor([float(i), -2.0 * i]), i % 3) for i in range(n)]


def test_data_without_noise_returns_dataset_points() -> None:
    torch.manual_seed(0)
    dataset = labelled_points(7)
    batch = Data(dataset=dataset).sample(500)
    assert batch.x.shape == (500, 2)
    assert torch.equal(batch.x, torch.stack([dataset[int(i)][0] for i in batch.indices]))
    assert (torch.bincount(batch.indices, minlength=7) > 0).all()
    plain = [x for x, _ in dataset]  # items without labels work too
    torch.manual_seed(0)
    assert torch.equal(Data(dataset=plain).sample(500).x, batch.x)


def test_data_adds_noise_of_the_stated_std() -> None:
    torch.manual_seed(0)
    dataset, std, n = labelled_points(5), 0.3, 40_000
    batch = Data(dataset=dataset, noise_std=std).sample(n)
    residual = (batch.x - torch.stack([dataset[int(i)][0] for i in batch.indices])).double()
    assert residual.abs().max() > 0
    assert residual.mean(0).abs().max() < Z * std / math.sqrt(n)
    assert (residual.var(0) / std**2 - 1).abs().max() < Z * math.sqrt(2 / n)
    corr = torch.corrcoef(residual.T)[0, 1].item()  # independent per coordinate
    assert abs(corr) < Z / math.sqrt(n)


@pytest.mark.parametrize(
    "kwargs", [{"dataset": []}, {"dataset": [torch.zeros(2)], "noise_std": -0.1}]
)
def test_data_bad_arguments_raise(kwargs: dict) -> None:
    torch.manual_seed(0)
    with pytest.raises(ValueError):
        Data(**kwargs)


def test_replay_refuses_a_buffer_of_another_chain_shape_and_copies_what_it_loads():
    replay = Replay(noise=Noise(shape=(2,)), capacity=8)
    with pytest.raises(ValueError, match=r"Noise.shape = \(2,\)"):
        replay.load_state_dict({"buffer": torch.zeros(8, 3)})
    stored = torch.zeros(8, 2)
    replay.load_state_dict({"buffer": stored})
    stored.add_(1.0)
    assert torch.equal(replay.buffer, torch.zeros(8, 2))
