"""Tests for the toy 2-D datasets: exact densities, exact samplers and argument checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from ebmkit.data.toy import (
    TOY_DATASETS,
    Checkerboard,
    EightGaussians,
    GaussianMixture,
    GaussianMixture2D,
    Pinwheel,
    Rings,
    SwissRoll,
    ToyDataset,
    TwoMoons,
)
from ebmkit.data.toy.curves import _gauss_legendre

ALL_CLASSES = list(TOY_DATASETS.values())
N_MOMENT_SAMPLES = 40000


def grid(bounds: tuple[float, float], resolution: int) -> tuple[torch.Tensor, float]:
    """Cell centres (resolution**2, 2) float64 of a square grid and the cell area."""
    lo, hi = bounds
    step = (hi - lo) / resolution
    centres = lo + (torch.arange(resolution, dtype=torch.float64) + 0.5) * step
    grid_y, grid_x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack((grid_x.reshape(-1), grid_y.reshape(-1)), dim=1), step * step


@pytest.fixture(scope="module", params=ALL_CLASSES, ids=list(TOY_DATASETS))
def dataset(request: pytest.FixtureRequest) -> ToyDataset:
    return request.param(n_samples=1000, seed=0)


@pytest.fixture(scope="module")
def density_on_grid(dataset: ToyDataset) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Grid points, exact density and cell area; 200 cells per side (a multiple of 4, so the
    Checkerboard squares and the test boxes are unions of whole cells)."""
    points, area = grid(dataset.bounds, 200)
    return points, dataset.log_density(points).exp(), area


def test_registry_names_every_class() -> None:
    assert TOY_DATASETS == {
        "EightGaussians": EightGaussians,
        "GaussianMixture": GaussianMixture,
        "Rings": Rings,
        "Checkerboard": Checkerboard,
        "TwoMoons": TwoMoons,
        "Pinwheel": Pinwheel,
        "SwissRoll": SwissRoll,
    }


def test_density_integrates_to_one(
    dataset: ToyDataset, density_on_grid: tuple[torch.Tensor, torch.Tensor, float]
) -> None:
    _, density, area = density_on_grid
    total = float(density.sum()) * area
    tolerance = 1e-3 if isinstance(dataset, Checkerboard) else 1e-2
    assert total == pytest.approx(1.0, abs=tolerance)


def test_sample_moments_match_exact_density(
    dataset: ToyDataset, density_on_grid: tuple[torch.Tensor, torch.Tensor, float]
) -> None:
    points, density, _ = density_on_grid
    weights = density / density.sum()
    x = dataset.sample(N_MOMENT_SAMPLES, torch.Generator().manual_seed(11)).double()

    def features(p: torch.Tensor) -> torch.Tensor:
        return torch.stack((p[:, 0], p[:, 1], p[:, 0] ** 2, p[:, 1] ** 2, p[:, 0] * p[:, 1]), 1)

    exact = (weights[:, None] * features(points)).sum(dim=0)
    sample_features = features(x)
    estimate = sample_features.mean(dim=0)
    standard_error = sample_features.std(dim=0) / math.sqrt(N_MOMENT_SAMPLES)
    # 5 standard errors of sampling noise plus a small allowance for the grid.
    assert torch.all((estimate - exact).abs() < 5 * standard_error + 2e-3), (estimate, exact)


def test_box_probabilities_match_exact_density(
    dataset: ToyDataset, density_on_grid: tuple[torch.Tensor, torch.Tensor, float]
) -> None:
    """Histogram check in a few boxes: catches shape errors that moments can average out."""
    points, density, area = density_on_grid
    x = dataset.sample(N_MOMENT_SAMPLES, torch.Generator().manual_seed(12)).double()
    lo, hi = dataset.bounds
    quarter = (hi - lo) / 4  # 50 grid cells: box edges fall between cell centres
    for i in range(4):
        for j in range(4):
            x0, y0 = lo + i * quarter, lo + j * quarter

            def inside(p: torch.Tensor, x0: float = x0, y0: float = y0) -> torch.Tensor:
                in_x = (p[:, 0] >= x0) & (p[:, 0] < x0 + quarter)
                return in_x & (p[:, 1] >= y0) & (p[:, 1] < y0 + quarter)

            exact = float(density[inside(points)].sum()) * area
            estimate = float(inside(x).double().mean())
            standard_error = math.sqrt(max(exact * (1 - exact), 1e-4) / N_MOMENT_SAMPLES)
            assert abs(estimate - exact) < 5 * standard_error + 1e-3, (i, j, estimate, exact)


def test_sample_shape_dtype_and_determinism(dataset: ToyDataset) -> None:
    first = dataset.sample(257, torch.Generator().manual_seed(5))
    second = dataset.sample(257, torch.Generator().manual_seed(5))
    other = dataset.sample(257, torch.Generator().manual_seed(6))
    assert first.shape == (257, 2) and first.dtype == torch.float32
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert dataset.sample(0, torch.Generator()).shape == (0, 2)


def test_sample_with_generator_leaves_global_rng_alone(dataset: ToyDataset) -> None:
    state = torch.get_rng_state()
    dataset.sample(100, torch.Generator().manual_seed(1))
    assert torch.equal(state, torch.get_rng_state())


def test_dataset_points_are_fixed_by_seed(dataset: ToyDataset) -> None:
    cls = type(dataset)
    again, other = cls(n_samples=1000, seed=0), cls(n_samples=1000, seed=1)
    assert len(dataset) == 1000 and dataset.points.shape == (1000, 2)
    assert dataset.points.dtype == torch.float32
    assert torch.equal(dataset.points, again.points)
    assert not torch.equal(dataset.points, other.points)
    assert torch.equal(dataset[3], dataset.points[3]) and dataset[3].shape == (2,)
    expected = dataset.sample(1000, torch.Generator().manual_seed(0))
    assert torch.equal(dataset.points, expected)


def test_samples_have_finite_log_density(dataset: ToyDataset) -> None:
    log_p = dataset.log_density(dataset.points)
    assert log_p.dtype == torch.float64 and log_p.shape == (1000,)
    assert bool(torch.isfinite(log_p).all())


def test_log_density_rejects_wrong_shape(dataset: ToyDataset) -> None:
    with pytest.raises(ValueError, match="shape"):
        dataset.log_density(torch.zeros(4, 3))


def test_bounds_are_a_proper_interval(dataset: ToyDataset) -> None:
    lo, hi = dataset.bounds
    assert lo < hi
    assert float(dataset.points.min()) > lo and float(dataset.points.max()) < hi


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    [
        (EightGaussians, {"n_samples": 0}, "n_samples"),
        (EightGaussians, {"radius": 0.0}, "radius"),
        (EightGaussians, {"std": -0.1}, "std"),
        (EightGaussians, {"std": math.nan}, "std"),
        (GaussianMixture, {"weights": (0.5, -0.3, 0.2)}, "weights"),
        (GaussianMixture, {"weights": (0.5, 0.5)}, "weights"),
        (GaussianMixture, {"means": ((0.0, 0.0, 0.0),) * 3}, "means"),
        (GaussianMixture, {"stds": (0.3, 0.3)}, "stds"),
        (GaussianMixture, {"stds": (0.3, 0.0, 0.3)}, "stds"),
        (Rings, {"n_rings": 0}, "n_rings"),
        (Rings, {"n_rings": 2.5}, "n_rings"),
        (Rings, {"radius": -1.0}, "radius"),
        (Rings, {"std": 0.0}, "std"),
        (Checkerboard, {"n_samples": -5}, "n_samples"),
        (TwoMoons, {"noise": 0.0}, "noise"),
        (Pinwheel, {"n_arms": 0}, "n_arms"),
        (Pinwheel, {"radial_std": 0.0}, "radial_std"),
        (Pinwheel, {"tangential_std": -1.0}, "tangential_std"),
        (Pinwheel, {"rate": math.inf}, "rate"),
        (SwissRoll, {"noise": 0.0}, "noise"),
        (SwissRoll, {"scale": -0.2}, "scale"),
        (SwissRoll, {"t_min": -1.0}, "t_min"),
        (SwissRoll, {"t_min": math.nan}, "t_min"),
        (SwissRoll, {"t_max": 1.0}, "t_max"),
        (SwissRoll, {"t_min": 2.0, "t_max": 2.0}, "t_max"),
        (SwissRoll, {"t_max": math.inf}, "t_max"),
    ],
)
def test_bad_arguments_raise(cls: type[ToyDataset], kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        cls(**{"n_samples": 10, **kwargs})


def test_sample_rejects_negative_count() -> None:
    with pytest.raises(ValueError, match="n must"):
        EightGaussians(n_samples=10).sample(-1)


def test_gaussian_mixture_log_density_matches_scipy() -> None:
    ds = GaussianMixture(n_samples=10)
    x = torch.tensor([[0.0, 0.0], [-1.5, 0.0], [0.3, 1.2], [4.0, -4.0]], dtype=torch.float64)
    expected = np.log(
        0.5 * stats.multivariate_normal([-1.5, 0.0], 0.09).pdf(x.numpy())
        + 0.3 * stats.multivariate_normal([1.5, 0.0], 0.09).pdf(x.numpy())
        + 0.2 * stats.multivariate_normal([0.0, 1.5], 0.09).pdf(x.numpy())
    )
    np.testing.assert_allclose(ds.log_density(x).numpy(), expected, rtol=1e-12)


def test_eight_gaussians_geometry_and_density() -> None:
    ds = EightGaussians(n_samples=10, radius=3.0, std=0.2)
    mixture = ds.mixture
    assert mixture.n_components == 8
    np.testing.assert_allclose(mixture.means[2].numpy(), [0.0, 3.0], atol=1e-12)
    np.testing.assert_allclose(mixture.weights.numpy(), np.full(8, 0.125))
    np.testing.assert_allclose(mixture.stds.numpy(), np.full(8, 0.2))
    mean_point = mixture.means[:1]
    expected = sum(
        0.125 * stats.multivariate_normal(mixture.means[k].numpy(), 0.04).pdf(mean_point[0])
        for k in range(8)
    )
    assert float(ds.log_density(mean_point)) == pytest.approx(math.log(expected), rel=1e-12)
    assert torch.equal(mixture.assign(mixture.means), torch.arange(8))


def test_gaussian_mixture_weights_are_normalised() -> None:
    ds = GaussianMixture(n_samples=10, weights=(2.0, 1.0, 1.0))
    np.testing.assert_allclose(ds.mixture.weights.numpy(), [0.5, 0.25, 0.25])


def test_assign_recovers_mixture_weights() -> None:
    ds = GaussianMixture(n_samples=10)
    n = 20000
    labels = ds.mixture.assign(ds.sample(n, torch.Generator().manual_seed(3)))
    fractions = torch.bincount(labels, minlength=3).double() / n
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    standard_error = torch.sqrt(weights * (1 - weights) / n)
    assert torch.all((fractions - weights).abs() < 5 * standard_error), fractions


def test_mixture_record_validates_itself() -> None:
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture2D(means=[[0.0, 0.0]], stds=[1.0], weights=[0.5])
    with pytest.raises(ValueError, match="means"):
        GaussianMixture2D(means=[0.0, 0.0], stds=[1.0], weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture2D(means=[[0.0, 0.0]], stds=[1.0], weights=[1.0, 0.0])


def test_non_mixtures_report_no_mixture() -> None:
    for cls in (Rings, Checkerboard, TwoMoons, Pinwheel, SwissRoll):
        assert cls(n_samples=10).mixture is None


def test_rings_density_matches_folded_normal_formula() -> None:
    ds = Rings(n_samples=10, n_rings=3, radius=1.5, std=0.2)
    rho = np.array([0.05, 0.4, 0.5, 1.0, 1.9])
    x = torch.tensor(np.stack((rho * np.cos(1.0), rho * np.sin(1.0)), 1))
    radii = np.array([1.5, 3.0, 4.5])
    radial = sum((stats.norm(r, 0.2).pdf(rho) + stats.norm(-r, 0.2).pdf(rho)) / 3 for r in radii)
    expected = np.log(radial / (2 * np.pi * rho))
    np.testing.assert_allclose(ds.log_density(x).numpy(), expected, rtol=1e-12)
    assert float(ds.log_density(torch.zeros(1, 2))) == math.inf


def test_rings_radial_distribution_is_folded_normal_mixture() -> None:
    ds = Rings(n_samples=10)
    n = 40000
    rho = torch.linalg.vector_norm(ds.sample(n, torch.Generator().manual_seed(4)).double(), dim=1)
    radii = np.array([1.0, 2.0, 3.0, 4.0])

    def folded_cdf(r: np.ndarray) -> np.ndarray:
        r = np.asarray(r)[..., None]
        return np.mean(
            stats.norm.cdf((r - radii) / 0.15) - stats.norm.cdf((-r - radii) / 0.15), -1
        )

    inner = float(folded_cdf(1.0))
    fraction = float((rho < 1.0).double().mean())
    assert abs(fraction - inner) < 5 * math.sqrt(inner * (1 - inner) / n), (fraction, inner)
    assert stats.kstest(rho.numpy(), folded_cdf).pvalue > 1e-3


def test_checkerboard_exact_values_and_samples_on_black_squares() -> None:
    ds = Checkerboard(n_samples=20000)
    x = torch.tensor([[0.5, 0.5], [0.5, -0.5], [-1.5, -1.5], [1.9, -0.1], [3.0, 0.0], [2.0, 0.5]])
    expected = torch.tensor(
        [-math.log(8), -math.inf, -math.log(8), -math.log(8), -math.inf, -math.inf],
        dtype=torch.float64,
    )
    assert torch.equal(ds.log_density(x), expected)
    cells = torch.floor(ds.points.double())
    assert bool((torch.remainder(cells.sum(dim=1), 2) == 0).all())
    counts = torch.unique(cells, dim=0, return_counts=True)[1]
    assert counts.numel() == 8


def test_checkerboard_float32_samples_stay_inside_their_square(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Offsets just below 1 must not round onto the edge of the next (white) square."""
    ds = Checkerboard(n_samples=10)
    largest_below_one = float(np.nextafter(1.0, 0.0))

    def rand_near_one(*size: int, **kwargs: object) -> torch.Tensor:
        return torch.full(size, largest_below_one, dtype=torch.float64)

    monkeypatch.setattr(torch, "rand", rand_near_one)
    x = ds.sample(1000, torch.Generator().manual_seed(0))
    assert bool(torch.isfinite(ds.log_density(x)).all())
    assert bool((x < torch.floor(x) + 1).all())


def test_two_moons_quadrature_matches_adaptive_integration() -> None:
    ds = TwoMoons(n_samples=10, noise=0.1)
    points = np.array([[0.5, -0.25], [-0.5, 0.75], [0.0, 0.3], [1.4, -0.6], [0.2, 0.2]])
    noise = 0.1

    def density(y: np.ndarray) -> float:
        total = 0.0
        for sign in (1.0, -1.0):

            def integrand(theta: float, sign: float = sign) -> float:
                c = sign * np.array([np.cos(theta) - 0.5, np.sin(theta) - 0.25])
                return float(np.exp(-0.5 * np.sum((y - c) ** 2) / noise**2))

            value, _ = integrate.quad(integrand, 0.0, np.pi, epsabs=0.0, epsrel=1e-12, limit=400)
            total += 0.5 * value / np.pi / (2 * np.pi * noise**2)
        return total

    expected = np.log([density(p) for p in points])
    got = ds.log_density(torch.tensor(points)).numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_pinwheel_density_is_untwisted_gaussian_mixture() -> None:
    ds = Pinwheel(n_samples=10, n_arms=3, radial_std=0.25, tangential_std=0.1, rate=0.4)
    y = torch.tensor([[0.2, 0.9], [-0.7, -0.4], [1.1, 0.0], [0.0, -1.3]], dtype=torch.float64)
    r = np.linalg.norm(y.numpy(), axis=1)
    twist = 0.4 * np.exp(r)
    x = np.stack(
        (
            np.cos(twist) * y[:, 0].numpy() + np.sin(twist) * y[:, 1].numpy(),
            -np.sin(twist) * y[:, 0].numpy() + np.cos(twist) * y[:, 1].numpy(),
        ),
        1,
    )
    density = np.zeros(len(x))
    for a in range(3):
        angle = 2 * np.pi * a / 3
        rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        covariance = rotation @ np.diag([0.25**2, 0.1**2]) @ rotation.T
        density += stats.multivariate_normal(rotation @ [1.0, 0.0], covariance).pdf(x) / 3
    np.testing.assert_allclose(ds.log_density(y).numpy(), np.log(density), rtol=1e-10)
    assert float(ds.log_density(torch.tensor([[1e3, 0.0]]))) == -math.inf


def test_swiss_roll_errors_name_the_parameter_and_the_value() -> None:
    with pytest.raises(ValueError, match=r"t_min must be a finite number >= 0, got -0\.5"):
        SwissRoll(n_samples=10, t_min=-0.5)
    with pytest.raises(ValueError, match=r"t_max must be .* > t_min = 3\.0, got 1\.0"):
        SwissRoll(n_samples=10, t_min=3.0, t_max=1.0)
    with pytest.raises(ValueError, match=r"scale must be .* > 0, got 0\.0"):
        SwissRoll(n_samples=10, scale=0.0)
    with pytest.raises(ValueError, match=r"noise must be .* > 0, got -0\.1"):
        SwissRoll(n_samples=10, noise=-0.1)


@pytest.mark.parametrize("n", [1, 2, 7, 256, 301])
def test_gauss_legendre_rule_matches_numpy(n: int) -> None:
    nodes, weights = _gauss_legendre(n)
    expected_nodes, expected_weights = np.polynomial.legendre.leggauss(n)
    assert nodes.dtype == weights.dtype == torch.float64
    np.testing.assert_allclose(nodes.numpy(), expected_nodes, rtol=0, atol=1e-15)
    np.testing.assert_allclose(weights.numpy(), expected_weights, rtol=1e-9)
    if n >= 7:  # exact for polynomials of degree < 2n; exp is resolved to float64 by n = 7
        integral = float((weights * torch.exp(nodes)).sum())
        assert integral == pytest.approx(math.e - 1 / math.e, rel=1e-14)


def swiss_roll_arc_length(ds: SwissRoll, t: np.ndarray) -> np.ndarray:
    """Arc length of scale * (t cos t, t sin t) from 0 to t: scale/2 (t sqrt(1+t^2) + asinh t)."""
    return 0.5 * ds.scale * (t * np.sqrt(1.0 + t * t) + np.arcsinh(t))


@pytest.mark.parametrize(
    "kwargs", [{}, {"t_min": 0.0, "t_max": 3 * math.pi, "scale": 0.3, "noise": 0.2}]
)
def test_swiss_roll_quadrature_nodes_lie_close_along_the_curve(kwargs: dict[str, float]) -> None:
    ds = SwissRoll(n_samples=10, **kwargs)
    centres = ds._quadrature_centres.numpy()
    assert centres.shape == (ds.n_quadrature, 2)
    # The curve's radius is scale * t, so each node's t is |c| / scale.
    t = np.linalg.norm(centres, axis=1) / ds.scale
    assert np.all(np.diff(t) > 0) and ds.t_min < t[0] and t[-1] < ds.t_max
    gaps = np.diff(swiss_roll_arc_length(ds, np.concatenate(([ds.t_min], t, [ds.t_max]))))
    assert gaps.max() < ds.noise / 6
    weights = ds._quadrature_log_weights.exp()
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-13)


@pytest.mark.parametrize(
    "kwargs", [{}, {"t_min": 0.0, "t_max": 3 * math.pi, "scale": 0.3, "noise": 0.2}]
)
def test_swiss_roll_quadrature_matches_adaptive_integration(kwargs: dict[str, float]) -> None:
    ds = SwissRoll(n_samples=10, **kwargs)
    t_min, t_max, scale, noise = ds.t_min, ds.t_max, ds.scale, ds.noise
    on_curve = scale * 2 * np.pi * np.array([1.0, 0.0])  # c(2 pi), or near it
    end = scale * t_max * np.array([np.cos(t_max), np.sin(t_max)])
    points = np.array(
        [on_curve, on_curve + 0.05, [0.0, 0.0], [-0.9, 0.4], end, end * 1.1, [3.2, -1.0]]
    )

    def density(y: np.ndarray) -> float:
        def integrand(t: float) -> float:
            c = scale * t * np.array([np.cos(t), np.sin(t)])
            return float(np.exp(-0.5 * np.sum((y - c) ** 2) / noise**2))

        # Breakpoints 0.1 apart in t keep every narrow peak of the integrand in view.
        breaks = np.linspace(t_min, t_max, 2 + math.ceil((t_max - t_min) / 0.1))[1:-1]
        value, _ = integrate.quad(
            integrand, t_min, t_max, points=breaks, epsabs=0.0, epsrel=1e-12, limit=2000
        )
        return value / (t_max - t_min) / (2 * np.pi * noise**2)

    expected = np.array([density(p) for p in points])
    got = ds.log_density(torch.tensor(points)).exp().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_swiss_roll_mean_radius_matches_exact_value() -> None:
    """E|y| is the mean over t ~ U[t_min, t_max] of the Rice mean of |c(t) + noise xi|.

    The Rice mean of radius nu = scale * t and noise s is s sqrt(pi/2) L_{1/2}(-nu^2 / (2 s^2))
    = s sqrt(pi/2) ((1 + a) i0e(a/2) + a i1e(a/2)) with a = nu^2 / (2 s^2); it exceeds
    scale * t by about s^2 / (2 scale t), which is kept rather than left to the tolerance.
    """
    ds = SwissRoll(n_samples=10)
    n = 40000
    y = ds.sample(n, torch.Generator().manual_seed(21)).double()
    radius = torch.linalg.vector_norm(y, dim=1).numpy()
    s = ds.noise

    def rice_mean(t: float) -> float:
        a = (ds.scale * t) ** 2 / (2 * s**2)
        return s * math.sqrt(math.pi / 2) * ((1 + a) * special.i0e(a / 2) + a * special.i1e(a / 2))

    exact = integrate.quad(rice_mean, ds.t_min, ds.t_max, epsrel=1e-12)[0] / (ds.t_max - ds.t_min)
    noiseless = ds.scale * (ds.t_min + ds.t_max) / 2
    assert 0 < exact - noiseless < 0.01
    standard_error = radius.std() / math.sqrt(n)
    assert abs(radius.mean() - exact) < 4 * standard_error, (radius.mean(), exact)


def test_swiss_roll_sample_angles_follow_the_spiral() -> None:
    """The polar angle of a sample tracks its radius: phi ~ |y| / scale (mod 2 pi).

    With r = phi - |y| / scale, the sample means of cos r and sin r must match their values
    under the exact density (on a grid); r would be spread over the circle if the sampler's
    angle and radius disagreed (a sign, a scale, cos and sin swapped).
    """
    ds = SwissRoll(n_samples=10)
    n = 40000

    def cos_sin_residual(p: torch.Tensor) -> torch.Tensor:
        residual = torch.atan2(p[:, 1], p[:, 0]) - torch.linalg.vector_norm(p, dim=1) / ds.scale
        return torch.stack((torch.cos(residual), torch.sin(residual)), dim=1)

    points, area = grid(ds.bounds, 200)
    density = ds.log_density(points).exp()
    exact = (density[:, None] * cos_sin_residual(points)).sum(dim=0) * area
    features = cos_sin_residual(ds.sample(n, torch.Generator().manual_seed(22)).double())
    estimate = features.mean(dim=0)
    standard_error = features.std(dim=0) / math.sqrt(n)
    assert float(exact[0]) > 0.8  # the residual is concentrated near 0
    assert torch.all((estimate - exact).abs() < 4 * standard_error + 1e-3), (estimate, exact)
