"""Tests for the toy metrics (grid KL, log-likelihood, MMD, SW, mode weights) and the figure."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import pytest
import torch
from helpers import PNG_SIGNATURE
from matplotlib.figure import Figure
from torch import nn

from ebmkit.data.toy import (
    TOY_DATASETS,
    EightGaussians,
    GaussianMixture,
    Rings,
    ToyDataset,
    TwoMoons,
)
from ebmkit.metrics.toy import (
    density_mode_weights,
    energy_grid,
    grid_kl,
    log_likelihood,
    log_partition,
    mmd,
    mode_weight_errors,
    mode_weights,
    sliced_wasserstein,
    toy_metrics,
)
from ebmkit.tracking.plots import density_figure, save_figure


class QuadraticEnergy(nn.Module):
    """E(x) = |x|^2 / (2 s^2): a single broad Gaussian, the 'wrong' model for a toy set."""

    def __init__(self, scale: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.scale = scale
        self.offset = nn.Parameter(torch.zeros(2))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x - self.offset)
        return (x * x).sum(dim=1) / (2 * self.scale**2)


def exact_energy(dataset: ToyDataset) -> Callable[[torch.Tensor], torch.Tensor]:
    """The energy -log p_data, whose model density equals the data density."""
    return lambda x: -dataset.log_density(x)


class ShiftedEnergy(nn.Module):
    """E(x) + c for a wrapped energy E: the same model density, another normaliser."""

    def __init__(self, energy: Callable[[torch.Tensor], torch.Tensor], constant: float) -> None:
        super().__init__()
        self.energy = energy
        self.constant = constant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy(x) + self.constant


# ---------------------------------------------------------------- energy_grid


def test_energy_grid_cell_centres_and_layout() -> None:
    points, energies = energy_grid(lambda x: x[:, 0] + 10 * x[:, 1], (-1.0, 1.0), resolution=2)
    expected = torch.tensor(
        [[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]], dtype=torch.float64
    )
    assert torch.equal(points, expected)
    assert energies.dtype == torch.float64 and energies.device.type == "cpu"
    # values.reshape(res, res)[i, j] sits at (x_j, y_i): rows walk y, columns walk x.
    assert torch.equal(energies.reshape(2, 2), torch.tensor([[-5.5, -4.5], [4.5, 5.5]]).double())


def test_energy_grid_chunks_without_grad_in_parameter_dtype() -> None:
    batches: list[int] = []
    grad_modes: list[bool] = []

    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            batches.append(x.shape[0])
            grad_modes.append(torch.is_grad_enabled())
            assert x.dtype == torch.float64
            return x @ self.weight

    points, energies = energy_grid(Recorder(), (0.0, 3.0), resolution=300)
    assert sum(batches) == 90000 and max(batches) <= 65536 and len(batches) == 2
    assert not any(grad_modes)
    assert points.shape == (90000, 2)
    torch.testing.assert_close(energies, points[:, 0] - 2 * points[:, 1], rtol=0, atol=1e-12)


def test_energy_grid_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="resolution"):
        energy_grid(lambda x: x[:, 0], (0.0, 1.0), resolution=0)
    with pytest.raises(ValueError, match="bounds"):
        energy_grid(lambda x: x[:, 0], (1.0, 0.0))
    with pytest.raises(ValueError, match="energy must map"):
        energy_grid(lambda x: x, (0.0, 1.0), resolution=4)


# ---------------------------------------------------------------- grid_kl


@pytest.mark.parametrize("name", list(TOY_DATASETS))
def test_grid_kl_of_exact_energy_is_zero(name: str) -> None:
    dataset = TOY_DATASETS[name](n_samples=10)
    assert abs(grid_kl(exact_energy(dataset), dataset, resolution=100)) < 1e-6


def test_grid_kl_of_broad_gaussian_matches_closed_form() -> None:
    """KL(8 Gaussians || N(0, s^2 I) restricted to the box) in closed form.

    The components are ~10 std apart, so the mixture entropy is log(2 pi e sigma^2) + log 8 up
    to ~1e-6; E|x|^2 = r^2 + 2 sigma^2; and renormalising q over the box [-3, 3]^2 adds
    log Q(box) = 2 log erf(3 / (s sqrt 2)).
    """
    radius, sigma, scale = 2.0, 0.15, 1.5
    dataset = EightGaussians(n_samples=10, radius=radius, std=sigma)
    entropy = math.log(2 * math.pi * math.e * sigma**2) + math.log(8)
    cross_entropy = math.log(2 * math.pi * scale**2) + (radius**2 + 2 * sigma**2) / (2 * scale**2)
    log_box_mass = 2 * math.log(math.erf(3.0 / (scale * math.sqrt(2))))
    expected = cross_entropy - entropy + log_box_mass
    assert dataset.bounds == (-3.0, 3.0)
    assert grid_kl(QuadraticEnergy(scale), dataset) == pytest.approx(expected, abs=1e-4)
    assert expected > 2.0


def test_grid_kl_at_a_temperature_scores_exp_of_minus_energy_over_temperature() -> None:
    """An energy T·E_exact is exact at temperature T (KL 0) and wrong at T = 1; dividing by
    T is the same as scoring the energy E/T, for the closed-form Gaussian case too."""
    dataset = Rings(n_samples=10)
    exact = exact_energy(dataset)
    cold = ShiftedEnergy(lambda x: 0.005 * exact(x), 3.0)  # a Langevin x − ∇E + 0.1ξ scale
    assert abs(grid_kl(cold, dataset, resolution=100, temperature=0.005)) < 1e-6
    assert grid_kl(cold, dataset, resolution=100) > 0.5  # p^0.005: nearly flat
    gaussians = EightGaussians(n_samples=10, radius=2.0, std=0.15)
    broad = QuadraticEnergy(1.5)
    expected = grid_kl(broad, gaussians)
    hot = ShiftedEnergy(lambda x: 4.0 * broad(x), -1.0)
    assert grid_kl(hot, gaussians, temperature=4.0) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan, True, "1"])
def test_grid_kl_refuses_a_temperature_that_is_not_a_positive_number(temperature: object) -> None:
    with pytest.raises(ValueError, match="temperature"):
        grid_kl(lambda x: x[:, 0], Rings(n_samples=10), resolution=4, temperature=temperature)


def test_grid_kl_refuses_a_cell_centre_on_the_rings_singularity() -> None:
    dataset = Rings(n_samples=10)
    with pytest.raises(ValueError, match="even resolution"):
        grid_kl(exact_energy(dataset), dataset, resolution=51)


# ---------------------------------------------------------------- log_likelihood


@pytest.mark.parametrize("dataset_class", [EightGaussians, Rings])
def test_log_likelihood_of_exact_energy_is_the_data_log_density(dataset_class: type) -> None:
    dataset = dataset_class(n_samples=10)
    samples = dataset.sample(10000, torch.Generator().manual_seed(11))
    model = log_likelihood(exact_energy(dataset), dataset, samples)
    exact = float(dataset.log_density(samples).mean())
    # Measured gaps: about 2e-8 (EightGaussians) and 4e-9 (Rings); 1e-3 bounds the grid error.
    assert model == pytest.approx(exact, abs=1e-3)
    assert abs(log_partition(exact_energy(dataset), dataset)) < 1e-3


def test_log_likelihood_draws_fresh_samples_from_the_generator_only() -> None:
    dataset = EightGaussians(n_samples=10)
    energy = QuadraticEnergy(1.5)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    drawn = log_likelihood(energy, dataset, n=500, generator=torch.Generator().manual_seed(3))
    given = log_likelihood(energy, dataset, dataset.sample(500, torch.Generator().manual_seed(3)))
    default = log_likelihood(energy, dataset, n=500)
    assert drawn == given
    assert default == log_likelihood(energy, dataset, n=500) and default != drawn
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("constant", [-40.0, 3.0, 25.0])
def test_log_likelihood_ignores_a_constant_added_to_the_energy(constant: float) -> None:
    dataset = EightGaussians(n_samples=10)
    samples = dataset.sample(2000, torch.Generator().manual_seed(12))
    for energy in (exact_energy(dataset), QuadraticEnergy(1.5)):  # float64 and float32 energies
        shifted = ShiftedEnergy(energy, constant)
        base = log_likelihood(energy, dataset, samples, resolution=100)
        assert log_likelihood(shifted, dataset, samples, resolution=100) == pytest.approx(
            base, abs=1e-6
        )


def test_log_likelihood_of_broad_gaussian_is_lower_by_the_kl() -> None:
    """The gap to the exact energy estimates KL(8 Gaussians || N(0, s^2 I) on the box).

    The closed form is the one of `test_grid_kl_of_broad_gaussian_matches_closed_form`; the
    per-point gap has a standard deviation of about 1, so 10000 points give a standard error
    of about 0.01 and the tolerance is 5 of those.
    """
    radius, sigma, scale = 2.0, 0.15, 1.5
    dataset = EightGaussians(n_samples=10, radius=radius, std=sigma)
    samples = dataset.sample(10000, torch.Generator().manual_seed(13))
    exact = log_likelihood(exact_energy(dataset), dataset, samples)
    broad = log_likelihood(QuadraticEnergy(scale), dataset, samples)
    entropy = math.log(2 * math.pi * math.e * sigma**2) + math.log(8)
    cross_entropy = math.log(2 * math.pi * scale**2) + (radius**2 + 2 * sigma**2) / (2 * scale**2)
    log_box_mass = 2 * math.log(math.erf(3.0 / (scale * math.sqrt(2))))
    assert broad < exact - 2.0
    assert exact - broad == pytest.approx(cross_entropy - entropy + log_box_mass, abs=0.05)


def test_log_likelihood_of_standard_normal_energy_matches_closed_form() -> None:
    """E = |x|^2 / 2 on Rings' square [-5, 5]^2 is the standard normal up to the box.

    The box holds erf(5 / sqrt 2)^2 of the mass, so log Z = log(2 pi) - 1.1e-6 and the mean
    log-density of any points is -log(2 pi) - mean |x|^2 / 2 well within 1e-3. The point
    outside the square is scored the same way, not clipped.
    """
    dataset = Rings(n_samples=10)
    assert dataset.bounds == (-5.0, 5.0)
    samples = torch.randn(1000, 2, generator=torch.Generator().manual_seed(14))
    samples = torch.cat((samples, torch.tensor([[6.0, 0.5], [0.0, 0.0]])))
    expected = -math.log(2 * math.pi) - float((samples.double() ** 2).sum(dim=1).mean()) / 2
    got = log_likelihood(QuadraticEnergy(1.0), dataset, samples)
    assert got == pytest.approx(expected, abs=1e-3)
    assert log_partition(QuadraticEnergy(1.0), dataset) == pytest.approx(
        math.log(2 * math.pi), abs=1e-3
    )


def test_log_likelihood_rejects_bad_arguments() -> None:
    dataset = TwoMoons(n_samples=10)
    energy = QuadraticEnergy(1.0)
    with pytest.raises(ValueError, match="n must be"):
        log_likelihood(energy, dataset, n=0)
    with pytest.raises(ValueError, match="at least 1"):
        log_likelihood(energy, dataset, torch.zeros(0, 2))
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        log_likelihood(energy, dataset, torch.zeros(4, 3))


# ---------------------------------------------------------------- mmd


def test_mmd_matches_pairwise_sum() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 2.0]])
    y = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    bandwidths = (1.0, 2.0)

    def k(a: torch.Tensor, b: torch.Tensor) -> float:
        squared = float(((a - b) ** 2).sum())
        return sum(math.exp(-squared / (2 * h * h)) for h in bandwidths)

    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(3), 2)) / 6
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(2), 2)) / 2
    xy = sum(k(a, b) for a in x for b in y) / 6
    assert mmd(x, y, bandwidths) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_mmd_same_law_near_zero_and_shift_matches_population_value() -> None:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(2000, 2, generator=generator), torch.randn(2000, 2, generator=generator)
    shift = torch.tensor([1.0, 0.0])
    bandwidths = (0.1, 0.2, 0.5, 1.0, 2.0)
    # For N(0, I) vs N(m, I) in 2-D: E k(X, X') = h^2 / (h^2 + 2) and
    # E k(X, Y) = h^2 / (h^2 + 2) * exp(-|m|^2 / (2 (h^2 + 2))).
    population = sum(
        2 * h * h / (h * h + 2) * (1 - math.exp(-1.0 / (2 * (h * h + 2)))) for h in bandwidths
    )
    assert abs(mmd(x, y)) < 0.01
    assert mmd(x, y + shift) == pytest.approx(population, abs=0.07)  # ~4 standard deviations


def test_mmd_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        mmd(torch.zeros(1, 2), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="dimension"):
        mmd(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(torch.zeros(3, 2), torch.zeros(3, 2), bandwidths=(1.0, 0.0))


# ---------------------------------------------------------------- sliced_wasserstein


def test_sliced_wasserstein_is_exact_w2_in_one_dimension_with_unequal_sizes() -> None:
    x = torch.tensor([[5.0], [0.0], [1.0]])
    y = torch.tensor([[2.0], [0.5]])
    # Quantiles: x is 0, 1, 5 on thirds, y is 0.5, 2 on halves; pieces at 1/3, 1/2, 2/3.
    squared = 0.25 / 3 + 0.25 / 6 + 1.0 / 6 + 9.0 / 3
    assert sliced_wasserstein(x, y, n_projections=7) == pytest.approx(math.sqrt(squared), 1e-12)


def test_sliced_wasserstein_of_exact_shift() -> None:
    x = torch.randn(500, 2, generator=torch.Generator().manual_seed(1))
    shift = torch.tensor([3.0, 4.0])
    value = sliced_wasserstein(x, x + shift, n_projections=4096)
    # W2^2 along u is (m.u)^2 exactly; its mean over directions is |m|^2 / 2 (5 sd: 2.8%).
    assert value == pytest.approx(5.0 / math.sqrt(2), rel=0.03)


def test_sliced_wasserstein_of_shifted_gaussians() -> None:
    generator = torch.Generator().manual_seed(2)
    x, y = torch.randn(4000, 2, generator=generator), torch.randn(3000, 2, generator=generator)
    shift = torch.tensor([3.0, 0.0])
    assert sliced_wasserstein(x, y + shift, n_projections=1024) == pytest.approx(
        3.0 / math.sqrt(2), rel=0.06
    )
    assert sliced_wasserstein(x, y) < 0.1


def test_sliced_wasserstein_randomness_comes_from_generator_only() -> None:
    generator = torch.Generator().manual_seed(3)
    x, y = torch.randn(300, 2, generator=generator), torch.randn(200, 2, generator=generator) + 1
    state = torch.get_rng_state()
    first = sliced_wasserstein(x, y, 16, torch.Generator().manual_seed(7))
    again = sliced_wasserstein(x, y, 16, torch.Generator().manual_seed(7))
    other = sliced_wasserstein(x, y, 16, torch.Generator().manual_seed(8))
    default = sliced_wasserstein(x, y, 16)
    assert first == again and first != other
    assert default == sliced_wasserstein(x, y, 16)
    assert torch.equal(state, torch.get_rng_state())


# ---------------------------------------------------------------- mode weights


def test_mode_weights_of_eight_gaussians_are_uniform() -> None:
    dataset = EightGaussians(n_samples=10)
    n = 16000
    weights = mode_weights(dataset.sample(n, torch.Generator().manual_seed(4)), dataset.mixture)
    assert weights.shape == (8,) and weights.dtype == torch.float64
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    standard_error = math.sqrt(0.125 * 0.875 / n)
    assert torch.all((weights - 0.125).abs() < 5 * standard_error), weights


def test_mode_weights_count_assignments_exactly() -> None:
    mixture = GaussianMixture(n_samples=10).mixture
    samples = mixture.means[[0, 0, 2, 0]] + 0.01
    assert torch.equal(mode_weights(samples, mixture), torch.tensor([0.75, 0.0, 0.25]).double())


def unbalanced(weights: tuple[float, float] = (0.2, 0.8)) -> GaussianMixture:
    """The flow-MCMC reference's 2-D set: weight 0.2 at -(2, 2), 0.8 at (2, 2), sd 0.5."""
    return GaussianMixture(
        n_samples=10, means=((-2.0, -2.0), (2.0, 2.0)), stds=(0.5, 0.5), weights=weights
    )


def test_mode_weights_go_to_the_nearest_mean_not_the_likeliest_component() -> None:
    mixture = unbalanced().mixture
    # Just on the light mode's side of the bisector: the heavy mode is the likelier
    # component there, but the region is the light mode's (the reference's partition).
    point = torch.tensor([[-0.03, -0.03]])
    assert int(mixture.assign(point)) == 1
    assert mode_weights(point, mixture).tolist() == [1.0, 0.0]


def test_mode_weight_errors_are_the_sum_and_the_max_of_the_gaps() -> None:
    mixture = GaussianMixture(n_samples=10).mixture  # weights (0.5, 0.3, 0.2)
    samples = mixture.means[[0, 0, 2, 0, 1, 1, 1, 1]] + 0.01  # weights (3/8, 4/8, 1/8)
    estimated = mode_weights(samples, mixture)
    total, largest = mode_weight_errors(estimated, mixture)
    assert total == pytest.approx(abs(3 / 8 - 0.5) + abs(4 / 8 - 0.3) + abs(1 / 8 - 0.2))
    assert largest == pytest.approx(0.2)


@pytest.mark.parametrize(
    "dataset", [unbalanced(), EightGaussians(n_samples=10)], ids=["unbalanced", "eight"]
)
def test_density_mode_weights_of_the_exact_energy_are_the_true_weights(
    dataset: ToyDataset,
) -> None:
    weights = density_mode_weights(exact_energy(dataset), dataset)
    assert weights.shape == (dataset.mixture.n_components,) and weights.dtype == torch.float64
    assert torch.allclose(weights, dataset.mixture.weights, atol=1e-3, rtol=0), weights


def test_density_mode_weights_see_a_balanced_density_where_the_data_are_not() -> None:
    dataset = unbalanced()
    balanced = exact_energy(unbalanced((0.5, 0.5)))
    weights = density_mode_weights(balanced, dataset)
    total, largest = mode_weight_errors(weights, dataset.mixture)
    assert total == pytest.approx(0.6, abs=0.01)
    assert largest == pytest.approx(0.3, abs=0.005)
    metrics = toy_metrics(balanced, dataset.sample(100), dataset, n_held_out=0)
    assert metrics["density_mode_weight_error"] == pytest.approx(0.6, abs=0.01)
    assert metrics["density_mode_weight_max_error"] == pytest.approx(0.3, abs=0.005)
    assert metrics["density_mode_weight_0"] == pytest.approx(0.5, abs=0.005)


def test_density_mode_weights_need_a_mixture_record() -> None:
    with pytest.raises(ValueError, match="mixture record.*Rings"):
        density_mode_weights(lambda x: 0.0 * x[:, 0], Rings(n_samples=10))


# ---------------------------------------------------------------- toy_metrics


def test_toy_metrics_on_exact_model() -> None:
    dataset = EightGaussians(n_samples=10)
    samples = dataset.sample(2000, torch.Generator().manual_seed(5))
    metrics = toy_metrics(
        exact_energy(dataset), samples, dataset, torch.Generator().manual_seed(6), resolution=100
    )
    expected_keys = {"grid_kl", "finite_fraction", "mmd", "sliced_wasserstein"}
    expected_keys |= {f"mode_weight_{k}" for k in range(8)} | {"mode_weight_error"}
    expected_keys |= {f"density_mode_weight_{k}" for k in range(8)}
    expected_keys |= {"mode_weight_max_error", "density_mode_weight_error"}
    expected_keys |= {"density_mode_weight_max_error"}
    expected_keys |= {"log_likelihood", "data_log_likelihood"}
    assert set(metrics) == expected_keys
    assert all(isinstance(value, float) for value in metrics.values())
    assert abs(metrics["grid_kl"]) < 1e-6
    assert metrics["finite_fraction"] == 1.0
    assert abs(metrics["mmd"]) < 0.01
    assert metrics["sliced_wasserstein"] < 0.1
    assert metrics["mode_weight_max_error"] < 5 * math.sqrt(0.125 * 0.875 / 2000)
    assert metrics["density_mode_weight_error"] < 1e-3
    assert math.isfinite(metrics["log_likelihood"])
    assert metrics["log_likelihood"] == pytest.approx(metrics["data_log_likelihood"], abs=1e-3)


def test_toy_metrics_log_likelihoods_show_the_gap_and_are_drawn_last() -> None:
    dataset = GaussianMixture(n_samples=10)
    samples = dataset.sample(300, torch.Generator().manual_seed(0))
    energy = QuadraticEnergy(2.0)
    metrics = toy_metrics(energy, samples, dataset, torch.Generator().manual_seed(2), 40)
    assert math.isfinite(metrics["log_likelihood"])
    assert math.isfinite(metrics["data_log_likelihood"])
    assert metrics["log_likelihood"] < metrics["data_log_likelihood"] - 0.1
    # The held-out draw comes after the others: dropping it changes no other entry.
    without = toy_metrics(
        energy, samples, dataset, torch.Generator().manual_seed(2), 40, n_held_out=0
    )
    assert math.isnan(without.pop("log_likelihood"))
    assert math.isnan(without.pop("data_log_likelihood"))
    assert without == {k: v for k, v in metrics.items() if "log_likelihood" not in k}


def test_toy_metrics_mode_weight_error_of_samples_is_the_hand_sum() -> None:
    dataset = GaussianMixture(n_samples=10)  # weights (0.5, 0.3, 0.2)
    samples = dataset.mixture.means[[0, 1, 1, 2, 2, 2, 2, 2, 2, 2]].float() + 0.05
    metrics = toy_metrics(QuadraticEnergy(2.0), samples, dataset, resolution=40, n_held_out=0)
    assert [metrics[f"mode_weight_{k}"] for k in range(3)] == pytest.approx([0.1, 0.2, 0.7])
    assert metrics["mode_weight_error"] == pytest.approx(0.4 + 0.1 + 0.5)
    assert metrics["mode_weight_max_error"] == pytest.approx(0.5)


def test_toy_metrics_leaves_global_rng_alone_even_with_dropout() -> None:
    dataset = EightGaussians(n_samples=10)
    energy = QuadraticEnergy(1.5, dropout=0.5).train()
    samples = dataset.sample(500, torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    state = torch.get_rng_state()
    toy_metrics(energy, samples, dataset, torch.Generator().manual_seed(1), resolution=40)
    toy_metrics(energy, samples, dataset, resolution=40)
    assert torch.equal(state, torch.get_rng_state())


def test_toy_metrics_is_deterministic_given_the_generator() -> None:
    dataset = GaussianMixture(n_samples=10)
    samples = dataset.sample(400, torch.Generator().manual_seed(0))
    energy = QuadraticEnergy(2.0)
    first = toy_metrics(energy, samples, dataset, torch.Generator().manual_seed(9), resolution=40)
    again = toy_metrics(energy, samples, dataset, torch.Generator().manual_seed(9), resolution=40)
    other = toy_metrics(energy, samples, dataset, torch.Generator().manual_seed(10), resolution=40)
    assert first == again
    assert first["mmd"] != other["mmd"]
    assert first["grid_kl"] == other["grid_kl"]


def test_toy_metrics_drops_non_finite_rows() -> None:
    dataset = GaussianMixture(n_samples=10)
    clean = dataset.sample(190, torch.Generator().manual_seed(0))
    bad = torch.full((10, 2), math.nan)
    bad[9] = torch.tensor([1.0, math.inf])  # one infinite coordinate is enough to drop a row
    dirty = torch.cat((clean[:50], bad, clean[50:]))
    energy = QuadraticEnergy(2.0)
    got = toy_metrics(
        energy, dirty, dataset, torch.Generator().manual_seed(1), resolution=40, n_reference=190
    )
    want = toy_metrics(
        energy, clean, dataset, torch.Generator().manual_seed(1), resolution=40, n_reference=190
    )
    assert got.pop("finite_fraction") == pytest.approx(190 / 200)
    assert want.pop("finite_fraction") == 1.0
    assert got == want


def test_toy_metrics_with_no_finite_sample_and_no_mixture() -> None:
    dataset = TwoMoons(n_samples=10)
    samples = torch.full((20, 2), math.nan)
    metrics = toy_metrics(QuadraticEnergy(1.0), samples, dataset, resolution=20)
    assert set(metrics) == {
        "grid_kl",
        "finite_fraction",
        "mmd",
        "sliced_wasserstein",
        "log_likelihood",
        "data_log_likelihood",
    }
    assert metrics["finite_fraction"] == 0.0
    assert math.isnan(metrics["mmd"]) and math.isnan(metrics["sliced_wasserstein"])
    assert math.isfinite(metrics["grid_kl"]) and metrics["grid_kl"] > 0
    # Held-out points come from the dataset, so the log-likelihoods need no model sample.
    assert metrics["log_likelihood"] < metrics["data_log_likelihood"]


def test_without_finite_samples_only_the_density_mode_weights_remain() -> None:
    dataset = unbalanced()
    samples = torch.full((20, 2), math.nan)
    metrics = toy_metrics(QuadraticEnergy(3.0), samples, dataset, resolution=40, n_held_out=0)
    for key in ("mode_weight_0", "mode_weight_1", "mode_weight_error", "mode_weight_max_error"):
        assert math.isnan(metrics[key]), key
    # A symmetric energy: cells on the bisector split their mass, so the weights are equal.
    assert metrics["density_mode_weight_0"] == pytest.approx(0.5, abs=1e-6)
    assert metrics["density_mode_weight_error"] == pytest.approx(0.6, abs=1e-6)


# ---------------------------------------------------------------- figure


def test_density_figure_and_atomic_png(tmp_path: Path) -> None:
    dataset = EightGaussians(n_samples=200)
    samples = torch.cat((dataset.points[:100], torch.full((3, 2), math.nan)))
    figure = density_figure(QuadraticEnergy(1.5), samples, dataset, resolution=32)
    assert isinstance(figure, Figure)
    axes = figure.get_axes()
    assert [a.get_title() for a in axes] == ["data", "learned density exp(-E)", "samples"]
    for a in axes:
        assert a.get_xlim() == (-3.0, 3.0) and a.get_ylim() == (-3.0, 3.0)
    image = axes[1].get_images()[0]
    assert image.get_extent() == [-3.0, 3.0, -3.0, 3.0] and image.origin == "lower"
    cell_area = (6.0 / 32) ** 2
    assert float(image.get_array().sum()) * cell_area == pytest.approx(1.0, rel=1e-9)
    assert len(axes[2].collections[0].get_offsets()) == 100

    path = save_figure(figure, tmp_path / "plots" / "density.png")
    assert path == tmp_path / "plots" / "density.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (400, 1200)
    assert float(pixels[:2, :, :3].min()) > 0.9  # white top rows: titles are not clipped
    assert sorted(p.name for p in path.parent.iterdir()) == ["density.png"]
