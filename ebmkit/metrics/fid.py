r"""Fréchet Inception Distance with pytorch-fid's network, its weights from a local file.

pytorch-fid downloads its Inception weights when the network is built; ebmkit never does:
the weights come from `weights=` / `--fid-weights PATH`, else `$EBMKIT_FID_WEIGHTS`, else
torch's hub cache (where pytorch-fid itself keeps them). Features are taken from tensors in
[−1, 1]; means and covariances are computed here in float64, then pytorch-fid's
`calculate_frechet_distance` gives the distance.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ebmkit.errors import EbmkitError

__all__ = [
    "FID_DIMS",
    "FID_WEIGHTS_ENV",
    "FID_WEIGHTS_FILE",
    "FIDWeightsNotFoundError",
    "InceptionFeatures",
    "dataset_statistics",
    "feature_statistics",
    "fid",
    "fid_between_paths",
    "find_fid_weights",
    "frechet_distance",
    "load_images",
    "load_statistics",
    "save_statistics",
]

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILE
)
FID_WEIGHTS_ENV = "EBMKIT_FID_WEIGHTS"
FID_DIMS = (64, 192, 768, 2048)
IMAGE_SUFFIXES = (".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")


class FIDWeightsNotFoundError(EbmkitError, FileNotFoundError):
    """The Inception weights file for FID is not where ebmkit looked."""


def _hub_weights() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def find_fid_weights(weights: str | os.PathLike[str] | None = None) -> Path:
    """The weights file: `weights` (a file, or a folder holding it), else $EBMKIT_FID_WEIGHTS,
    else torch's hub cache. Raises FIDWeightsNotFoundError saying where to put it.
    """
    given = weights if weights is not None else os.environ.get(FID_WEIGHTS_ENV) or None
    if given is not None:
        path = Path(given)
        path = path / FID_WEIGHTS_FILE if path.is_dir() else path
        if path.is_file():
            return path
        source = "--fid-weights / weights=" if weights is not None else f"${FID_WEIGHTS_ENV}"
        looked = f"{path} (from {source})"
    else:
        if _hub_weights().is_file():
            return _hub_weights()
        looked = f"${FID_WEIGHTS_ENV} (not set) and torch's hub cache {_hub_weights()}"
    raise FIDWeightsNotFoundError(
        f"FID needs pytorch-fid's Inception weights, file {FID_WEIGHTS_FILE}; looked at "
        f"{looked}. Download it where internet exists from {FID_WEIGHTS_URL}, then pass "
        f'--fid-weights PATH (or `metrics.fid.weights = "PATH"` in gin), set '
        f"${FID_WEIGHTS_ENV}=PATH, or put it in {_hub_weights().parent}/"
    )


@contextlib.contextmanager
def _weights_source(weights: Path | None) -> Iterator[None]:
    """Make pytorch-fid's `load_state_dict_from_url` read `weights` instead of downloading.

    With `weights=None` (random weights) it returns the freshly built network's own state,
    captured from pytorch-fid's `_inception_v3`, so the real architecture stays untouched.
    """
    from pytorch_fid import inception

    built: list[torch.nn.Module] = []
    original = inception._inception_v3

    def capture(*args: Any, **kwargs: Any) -> torch.nn.Module:
        network = original(*args, **kwargs)
        built.append(network)
        return network

    def load(url: str, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        if weights is None:
            return built[-1].state_dict()
        return torch.load(weights, map_location="cpu", weights_only=True)

    with (
        mock.patch.object(inception, "_inception_v3", capture),
        mock.patch.object(inception, "load_state_dict_from_url", load),
    ):
        yield


class InceptionFeatures:
    """Inception-v3 (pytorch-fid's FID variant) features of images in [−1, 1].

    Arguments:
        dims: 2048 (final pooling, the standard FID), or 64 / 192 / 768 (earlier blocks,
            cheaper, not comparable to published numbers).
        weights: the weights file (or a folder holding it); see `find_fid_weights`.
        random_weights: build the architecture without loading weights (tests only: such
            features are not an FID).
        batch_size: images per forward pass.
        device: where the network runs.
        quantize: round images to 8 bits first, as saving them as PNG would (the usual FID).
    """

    def __init__(
        self,
        dims: int = 2048,
        weights: str | os.PathLike[str] | None = None,
        random_weights: bool = False,
        batch_size: int = 50,
        device: str = "cpu",
        quantize: bool = True,
    ) -> None:
        if dims not in FID_DIMS:
            raise ValueError(f"FID dims must be one of {FID_DIMS}, got {dims}")
        from pytorch_fid.inception import InceptionV3

        path = None if random_weights else find_fid_weights(weights)
        block = InceptionV3.BLOCK_INDEX_BY_DIM[dims]
        try:
            with _weights_source(path):
                network = InceptionV3([block], use_fid_inception=True)
        except (RuntimeError, OSError, ValueError, KeyError) as error:
            raise EbmkitError(
                f"cannot load FID Inception weights from {path} ({type(error).__name__}: "
                f"{error}); it must be pytorch-fid's {FID_WEIGHTS_FILE}"
            ) from error
        self.network = network.to(device).eval()
        self.dims, self.batch_size, self.device, self.quantize = dims, batch_size, device, quantize
        self.random_weights = random_weights

    @torch.no_grad()
    def __call__(self, images: Tensor) -> np.ndarray:
        """Features (N, dims) float64 of images (N, C, H, W) in [−1, 1], C = 1 or 3."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"FID takes images (N, 1|3, H, W), got shape {tuple(images.shape)}")
        features = []
        for batch in images.split(self.batch_size):
            x = ((batch.float() + 1) / 2).clamp(0, 1)
            if self.quantize:
                x = (x * 255).round() / 255
            x = x.expand(-1, 3, -1, -1).to(self.device)
            output = self.network(x)[0]
            if output.shape[2:] != (1, 1):
                output = torch.nn.functional.adaptive_avg_pool2d(output, (1, 1))
            features.append(output.flatten(1).double().cpu())
        return torch.cat(features).numpy()


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (float64) of features (N, d); N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"statistics need features (N >= 2, d), got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """|μ1 − μ2|² + tr(Σ1 + Σ2 − 2(Σ1Σ2)^½), by pytorch-fid's `calculate_frechet_distance`.

    Its print about a singular product goes to stderr; scipy's deprecation of the `disp`
    argument it passes is silenced (pytorch-fid 0.3.0 with scipy 1.17).
    """
    from pytorch_fid.fid_score import calculate_frechet_distance

    if np.shape(mu1) != np.shape(mu2) or np.shape(sigma1) != np.shape(sigma2):
        raise ValueError(
            f"statistics of different dimensions: mu {np.shape(mu1)} vs {np.shape(mu2)}, "
            f"sigma {np.shape(sigma1)} vs {np.shape(sigma2)} (were they made with other dims?)"
        )
    printed = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(printed):
            warnings.filterwarnings("ignore", message="The `disp` argument is deprecated")
            distance = calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    except ValueError as error:
        raise EbmkitError(
            f"the Fréchet distance failed ({error}); use more images than feature "
            f"dimensions, or fewer dims"
        ) from error
    finally:
        if printed.getvalue():
            print(printed.getvalue().strip(), file=sys.stderr)
    return float(distance)


def load_statistics(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an .npz file holding arrays `mu` and `sigma` (pytorch-fid's format)."""
    try:
        with np.load(path) as data:
            return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
    except (OSError, KeyError, ValueError) as error:
        raise EbmkitError(
            f"{path} is not FID statistics (an .npz with arrays mu and sigma): {error}"
        ) from error


def save_statistics(path: str | os.PathLike[str], mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write (mu, sigma) as .npz, atomically (a failed write leaves no temporary file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        with temporary.open("wb") as stream:
            np.savez(stream, mu=mu, sigma=sigma)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _check_statistics_target(path: Path) -> None:
    """`--save-stats PATH` before any work: an .npz name in a folder that can be written."""
    from ebmkit.runs.folders import check_writable, writing_into

    if path.suffix != ".npz":
        raise EbmkitError(
            f"--save-stats must name an .npz file (it is read back by its suffix), got {path}; "
            f"e.g. --save-stats {path.with_suffix('.npz')}"
        )
    with writing_into(path, "--save-stats", "statistics file"):
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        check_writable(path.parent)


def load_images(folder: str | os.PathLike[str]) -> Tensor:
    """The images in `folder` (sorted by name) as a float tensor (N, 3, H, W) in [−1, 1]."""
    folder = Path(folder)
    try:
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    except OSError as error:  # no permission, not a folder
        raise EbmkitError(
            f"the images in {folder} cannot be listed ({error.strerror or error}); give a "
            f"readable folder of images or an .npz of statistics"
        ) from error
    if not files:
        raise EbmkitError(
            f"no images in {folder} (looked for {', '.join(IMAGE_SUFFIXES)}); write samples "
            f"with `ebmkit sample RUN --out {folder}`"
        )
    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                arrays.append(np.asarray(image.convert("RGB")))
        except OSError as error:  # not an image, truncated, unreadable
            raise EbmkitError(
                f"{file} cannot be read as an image ({error}); remove it from {folder}, or "
                f"write the samples again with `ebmkit sample RUN --out NEW_FOLDER`"
            ) from error
    sizes = {array.shape for array in arrays}
    if len(sizes) > 1:
        raise EbmkitError(f"images in {folder} differ in size ({sorted(sizes)}); resize them")
    stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)
    return stacked.float().div(255).mul(2).sub(1)


def _statistics_of(
    source: str | os.PathLike[str] | Tensor, features: InceptionFeatures | None
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a tensor of images, a folder of images or an .npz file."""
    if isinstance(source, Tensor):
        if features is None:
            raise ValueError("statistics of a tensor of images need the feature network")
        return feature_statistics(features(source))
    path = Path(source)
    if path.suffix == ".npz":
        if not path.is_file():
            raise EbmkitError(f"FID statistics file {path} does not exist")
        return load_statistics(path)
    if not path.is_dir() or features is None:
        raise EbmkitError(f"{path} is neither a folder of images nor an .npz of statistics")
    return feature_statistics(features(load_images(path)))


def dataset_statistics(
    dataset: Any,
    features: InceptionFeatures,
    cache_dir: str | os.PathLike[str] | None = None,
    max_images: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of a dataset's images, cached as .npz keyed by dataset, size and dims.

    The cache file is `<cache_dir>/<name>-<H>x<W>-<dims>d-<n>.npz` (cache_dir default:
    `<data root>/fid-statistics`); features of random weights are never cached.

    Arguments:
        dataset: items x or (x, label), x (C, H, W) in [−1, 1]; its `name` attribute (if
            any) names the cache file.
        features: the feature extractor.
        cache_dir: where the statistics are kept.
        max_images: use the first this many images (None: all).
    """
    from ebmkit.data.images import data_root
    from ebmkit.initializers.data import first_tensor

    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    shape = tuple(first_tensor(dataset[0]).shape)
    name = getattr(dataset, "name", type(dataset).__name__)
    key = f"{name}-{shape[-2]}x{shape[-1]}-{features.dims}d-{count}"
    key = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
    cache = Path(cache_dir) if cache_dir is not None else data_root() / "fid-statistics"
    path = cache / f"{key}.npz"
    if path.is_file() and not features.random_weights:
        return load_statistics(path)
    feature_rows = []
    for start in range(0, count, features.batch_size):
        stop = min(start + features.batch_size, count)
        batch = torch.stack([first_tensor(dataset[index]) for index in range(start, stop)])
        feature_rows.append(features(batch))
    mu, sigma = feature_statistics(np.concatenate(feature_rows))
    if not features.random_weights:
        save_statistics(path, mu, sigma)
    return mu, sigma


def _paired_statistics(
    sources: tuple[str | os.PathLike[str] | Tensor, str | os.PathLike[str] | Tensor],
    dims: int,
    weights: str | os.PathLike[str] | None,
    random_weights: bool,
    batch_size: int,
    device: str,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Statistics of both sets; one feature network serves both (built only if needed)."""
    network: InceptionFeatures | None = None
    statistics = []
    for source in sources:
        if statistics and _same_path(source, sources[0]):  # one set against itself: once
            statistics.append(statistics[0])
            continue
        needs_network = isinstance(source, Tensor) or Path(source).suffix != ".npz"
        if needs_network and network is None:
            network = InceptionFeatures(dims, weights, random_weights, batch_size, device)
        statistics.append(_statistics_of(source, network))
    return statistics


def _same_path(
    first: str | os.PathLike[str] | Tensor, second: str | os.PathLike[str] | Tensor
) -> bool:
    if isinstance(first, Tensor) or isinstance(second, Tensor):
        return False
    return Path(first).resolve() == Path(second).resolve()


def fid(
    samples: str | os.PathLike[str] | Tensor,
    reference: str | os.PathLike[str] | Tensor,
    dims: int = 2048,
    weights: str | None = None,
    random_weights: bool = False,
    batch_size: int = 50,
    device: str = "cpu",
) -> float:
    """FID between two image sets (folders of images, .npz of (mu, sigma), or tensors).

    A tensor holds images (N, C, H, W) in [−1, 1].

    Arguments:
        samples, reference: the two sets.
        dims: feature dimension (2048 standard; 64 / 192 / 768 cheaper, not comparable).
        weights: the Inception weights file (see `find_fid_weights`).
        random_weights: tests only.
        batch_size, device: for the feature network.
    """
    statistics = _paired_statistics(
        (samples, reference), dims, weights, random_weights, batch_size, device
    )
    (mu1, sigma1), (mu2, sigma2) = statistics
    return frechet_distance(mu1, sigma1, mu2, sigma2)


def fid_between_paths(
    samples: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    dims: int = 2048,
    weights: str | os.PathLike[str] | None = None,
    random_weights: bool = False,
    batch_size: int = 50,
    device: str = "cpu",
    save_samples_stats: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """`ebmkit eval fid`: the FID of two folders / .npz files, as a summary dict."""
    if dims not in FID_DIMS:
        raise EbmkitError(f"--dims must be one of {FID_DIMS}, got {dims}")
    for path in (samples, reference):
        if not Path(path).exists():
            raise EbmkitError(f"{path} does not exist (give a folder of images or an .npz)")
    if save_samples_stats is not None:
        _check_statistics_target(Path(save_samples_stats))
    statistics = _paired_statistics(
        (samples, reference), dims, weights, random_weights, batch_size, device
    )
    (mu1, sigma1), (mu2, sigma2) = statistics
    if mu1.shape != mu2.shape:
        raise EbmkitError(
            f"the two sets have features of {mu1.shape[0]} and {mu2.shape[0]} dims; an .npz "
            f"must have been made with the same --dims ({dims})"
        )
    if save_samples_stats is not None:
        from ebmkit.runs.folders import writing_into

        with writing_into(Path(save_samples_stats), "--save-stats", "statistics file"):
            save_statistics(save_samples_stats, mu1, sigma1)
    return {
        "fid": frechet_distance(mu1, sigma1, mu2, sigma2),
        "dims": int(mu1.shape[0]),
        "samples": str(samples),
        "reference": str(reference),
        "random_weights": random_weights,
    }
