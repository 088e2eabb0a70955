"""FID: the Fréchet distance against closed forms, pytorch-fid's InceptionV3 with weights from a
local file (never downloaded), cached statistics, and `ebmkit eval fid` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ebmkit.cli import main
from ebmkit.metrics import fid as fid_module
from ebmkit.metrics.fid import (
    FID_WEIGHTS_ENV,
    FID_WEIGHTS_FILE,
    FIDWeightsNotFoundError,
    InceptionFeatures,
    dataset_statistics,
    feature_statistics,
    fid,
    frechet_distance,
    load_statistics,
)


@pytest.fixture(autouse=True)
def _no_weights_anywhere(tmp_path, monkeypatch):
    """Neither $EBMKIT_FID_WEIGHTS nor a hub cache of the machine leaks into a test."""
    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A weights file in pytorch-fid's format: the full FID Inception's state, random values."""
    from pytorch_fid.inception import fid_inception_v3

    torch.manual_seed(0)
    with fid_module._weights_source(None):
        network = fid_inception_v3()
    for parameter in network.parameters():  # recognisable values
        parameter.data.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("weights") / FID_WEIGHTS_FILE
    torch.save(network.state_dict(), path)
    return path


def _spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T + d * np.eye(d)


def test_identical_statistics_have_zero_distance():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), _spd(rng, 16)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_diagonal_gaussians_match_the_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    var1, var2 = rng.uniform(0.1, 3, size=8), rng.uniform(0.1, 3, size=8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    got = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_statistics_are_float64_mean_and_covariance():
    features = np.random.default_rng(2).normal(size=(50, 4)).astype(np.float32)
    mu, sigma = feature_statistics(features)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, features.astype(np.float64).mean(0))
    np.testing.assert_allclose(sigma, np.cov(features.astype(np.float64), rowvar=False))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(features[:1])


def test_mismatched_dimensions_are_refused():
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))


def test_features_see_images_in_zero_one_quantized_to_8_bits():
    features = InceptionFeatures(dims=64, random_weights=True, batch_size=3)
    seen = []
    features.network.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    out = features(x)
    assert out.shape == (4, 64) and out.dtype == np.float64 and np.isfinite(out).all()
    assert [batch.shape[0] for batch in seen] == [3, 1]
    expected = (((x + 1) / 2) * 255).round() / 255
    torch.testing.assert_close(torch.cat(seen), expected)
    gray = features(x[:, :1])  # one channel is repeated to three
    np.testing.assert_allclose(gray, features(x[:, :1].expand(-1, 3, -1, -1)))


@pytest.mark.parametrize("dims", [64, 192])
def test_feature_dimensions(dims):
    features = InceptionFeatures(dims=dims, random_weights=True)
    assert features(torch.zeros(2, 3, 8, 8)).shape == (2, dims)


def test_weights_load_from_a_file_the_env_or_the_hub_cache(weights_file, tmp_path, monkeypatch):
    from pytorch_fid.inception import fid_inception_v3

    with fid_module._weights_source(weights_file):
        reference = fid_inception_v3()
    expected = reference.Conv2d_1a_3x3.conv.weight

    def first_conv(features: InceptionFeatures) -> torch.Tensor:
        return features.network.blocks[0][0].conv.weight

    torch.testing.assert_close(first_conv(InceptionFeatures(64, weights=weights_file)), expected)
    torch.testing.assert_close(
        first_conv(InceptionFeatures(64, weights=weights_file.parent)), expected
    )
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(weights_file))
    torch.testing.assert_close(first_conv(InceptionFeatures(64)), expected)
    monkeypatch.delenv(FID_WEIGHTS_ENV)
    hub = tmp_path / "torch-home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / FID_WEIGHTS_FILE).symlink_to(weights_file)
    torch.testing.assert_close(first_conv(InceptionFeatures(64)), expected)


def test_missing_weights_name_the_file_and_where_it_goes(tmp_path, monkeypatch):
    with pytest.raises(FIDWeightsNotFoundError) as caught:
        InceptionFeatures(dims=64)
    message = str(caught.value)
    for expected in (FID_WEIGHTS_FILE, "--fid-weights", FID_WEIGHTS_ENV, "hub", "Download"):
        assert expected in message, (expected, message)
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(tmp_path / "nowhere.pth"))
    with pytest.raises(FIDWeightsNotFoundError, match="nowhere.pth"):
        InceptionFeatures(dims=64)


def test_dataset_statistics_are_cached_by_name_size_and_dims(weights_file, tmp_path):
    class Tiny(torch.utils.data.Dataset):
        name = "Tiny-train"

        def __len__(self) -> int:
            return 5

        def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
            return torch.linspace(-1, 1, 3 * 8 * 8).view(3, 8, 8) * (index + 1) / 5, 0

    features = InceptionFeatures(64, weights=weights_file, batch_size=2)
    mu, sigma = dataset_statistics(Tiny(), features, cache_dir=tmp_path / "cache")
    cached = tmp_path / "cache" / "Tiny-train-8x8-64d-5.npz"
    assert cached.is_file()
    np.testing.assert_array_equal(load_statistics(cached)[0], mu)
    features.network = None  # a second call must not need the network
    again = dataset_statistics(Tiny(), features, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(again[1], sigma)
    random = InceptionFeatures(64, random_weights=True)
    dataset_statistics(Tiny(), random, cache_dir=tmp_path / "random", max_images=3)
    assert not (tmp_path / "random").exists()  # random features are never cached


def _write_pngs(folder: Path, seed: int, n: int = 4, size: int = 16) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(n):
        pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return folder


def test_eval_fid_runs_the_real_architecture_end_to_end(tmp_path, capsys):
    samples = _write_pngs(tmp_path / "samples", seed=0)
    reference = _write_pngs(tmp_path / "reference", seed=1)
    stats = tmp_path / "samples.npz"
    argv = ["eval", "fid", "--samples", str(samples), "--reference", str(reference)]
    assert main([*argv, "--dims", "64", "--random-weights", "--save-stats", str(stats)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dims"] == 64 and np.isfinite(summary["fid"]) and summary["fid"] >= 0
    # The saved statistics against themselves: no network needed, distance zero.
    assert main(["eval", "fid", "--samples", str(stats), "--reference", str(stats)]) == 0
    assert abs(json.loads(capsys.readouterr().out)["fid"]) < 1e-6


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # 6 images, 64 dims: singular
def test_fid_of_tensors_matches_the_distance_of_their_statistics(weights_file):
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(6, 3, 8, 8, generator=generator) * 2 - 1
    b = torch.rand(6, 3, 8, 8, generator=generator) * 2 - 1
    features = InceptionFeatures(64, weights=weights_file)
    expected = frechet_distance(*feature_statistics(features(a)), *feature_statistics(features(b)))
    assert fid(a, b, dims=64, weights=str(weights_file)) == pytest.approx(expected, rel=1e-6)


def test_eval_fid_without_weights_is_a_clear_error(tmp_path, capsys):
    samples = _write_pngs(tmp_path / "samples", seed=0, n=2)
    argv = ["eval", "fid", "--samples", str(samples), "--reference", str(samples), "--dims", "64"]
    assert main(argv) == 1
    error = capsys.readouterr().err
    assert FID_WEIGHTS_FILE in error and "--fid-weights" in error


def test_eval_fid_rejects_bad_inputs(tmp_path, capsys):
    assert main(["eval", "fid", "--samples", str(tmp_path / "x"), "--reference", "y"]) == 1
    assert "does not exist" in capsys.readouterr().err
    folder = _write_pngs(tmp_path / "s", seed=0, n=2)
    argv = ["eval", "fid", "--samples", str(folder), "--reference", str(folder), "--dims", "65"]
    assert main(argv) == 1
    assert "--dims must be one of" in capsys.readouterr().err
