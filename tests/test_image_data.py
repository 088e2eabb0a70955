"""Image datasets from a local root: torchvision's layouts, [−1, 1], dequantisation, and one
clear message for a missing folder; the image configs run end to end on a tiny Flowers102."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import ebmkit.runs.experiment  # noqa: F401 - defines the `experiment` configurable
from ebmkit.cli import main
from ebmkit.data.images import DATA_ROOT_ENV, ImageDataset
from ebmkit.data.loader import ResumableLoader
from ebmkit.errors import DatasetNotFoundError
from ebmkit.registry import create, reset_registry
from ebmkit.testing import FLOWERS_COLOURS, write_flowers102

GIN = Path(__file__).resolve().parents[1] / "gin"


@pytest.fixture(autouse=True)
def _empty_data_root(tmp_path, monkeypatch):
    """No test depends on a ./data or $EBMKIT_DATA of the machine."""
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "no-data-here"))


@pytest.fixture
def flowers(tmp_path) -> Path:
    return write_flowers102(tmp_path / "data")


def test_flowers102_through_the_registry_has_shape_range_and_labels(flowers):
    dataset = create("dataset", "Flowers102", root=str(flowers), split="train")
    assert isinstance(dataset, ImageDataset) and len(dataset) == 4
    for index in range(4):
        x, label = dataset[index]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
        assert label == index % 5  # imagelabels are 1-based; torchvision makes them 0-based
        expected = torch.tensor(FLOWERS_COLOURS[index]).float().div(255).mul(2).sub(1)
        torch.testing.assert_close(x.mean(dim=(1, 2)), expected, atol=3 * 2 / 255, rtol=0)


@pytest.mark.parametrize("split, length", [("train", 4), ("val", 2), ("test", 2), ("all", 8)])
def test_flowers102_splits_follow_setid(flowers, split, length):
    assert len(create("dataset", "Flowers102", root=str(flowers), split=split)) == length


def test_dequantisation_adds_gaussian_noise_of_the_given_std_per_item(flowers):
    clean = create("dataset", "Flowers102", root=str(flowers))
    noisy = create("dataset", "Flowers102", root=str(flowers), dequantize_std=0.03)
    torch.manual_seed(0)
    differences = torch.stack([noisy[i][0] - clean[i][0] for i in range(4)])
    assert abs(differences.std().item() - 0.03) < 0.002
    assert abs(differences.mean().item()) < 0.002
    # Drawn from the global RNG: a fresh draw differs, a re-seeded one repeats.
    first = noisy[0][0]
    assert not torch.equal(first, noisy[0][0])
    torch.manual_seed(0)
    assert torch.equal(noisy[0][0] - clean[0][0], differences[0])


def test_in_memory_items_equal_items_read_on_demand(flowers):
    lazy = create("dataset", "Flowers102", root=str(flowers), split="all", image_size=16)
    cached = create(
        "dataset", "Flowers102", root=str(flowers), split="all", image_size=16, in_memory=True
    )
    for index in range(len(lazy)):
        assert torch.equal(lazy[index][0], cached[index][0])
        assert lazy[index][1] == cached[index][1]


def test_resumable_loader_takes_x_of_the_image_items(flowers):
    dataset = create("dataset", "Flowers102", root=str(flowers), split="all", channels=1)
    batch = next(ResumableLoader(dataset, batch_size=4))
    assert batch.shape == (4, 1, 32, 32)


def test_image_folder_resizes_and_converts_channels(tmp_path):
    for label, name in enumerate(["cats", "dogs"]):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for index in range(2):
            image = Image.new("RGB", (20 + 10 * index, 30), (40 * label, 100, 200))
            image.save(tmp_path / "pets" / name / f"{index}.png")
    dataset = create("dataset", "ImageFolder", root=str(tmp_path / "pets"), image_size=16)
    assert len(dataset) == 4
    assert [dataset[i][1] for i in range(4)] == [0, 0, 1, 1]
    assert all(dataset[i][0].shape == (3, 16, 16) for i in range(4))
    gray = create("dataset", "ImageFolder", root=str(tmp_path / "pets"), channels=1)
    assert gray[0][0].shape == (1, 32, 32)
    # PNG is lossless: RGB (0, 100, 200) → grey level 0.299·0 + 0.587·100 + 0.114·200 ≈ 81.5
    torch.testing.assert_close(
        gray[0][0].mean(), torch.tensor(81 / 255 * 2 - 1), atol=0.01, rtol=0
    )


def test_digits_ships_with_sklearn_and_is_sized_as_configured():
    dataset = create("dataset", "Digits", image_size=28, padding=2, channels=3)
    assert len(dataset) == 1797
    x, label = dataset[5]
    assert x.shape == (3, 32, 32) and label == 5
    assert x.min() >= -1 and x.max() <= 1
    assert torch.all(x[:, :2] == -1) and torch.all(x[:, :, -2:] == -1)  # padding = background
    plain = create("dataset", "Digits")
    assert plain[0][0].shape == (1, 8, 8)
    assert max(plain[i][0].max() for i in range(20)) == 1  # grey level 16 → +1


def test_missing_flowers102_names_the_expected_files_and_download(tmp_path):
    root = tmp_path / "empty"
    with pytest.raises(DatasetNotFoundError) as caught:
        create("dataset", "Flowers102", root=str(root))
    message = str(caught.value)
    for expected in (
        "dataset Flowers102",
        f"{root}/flowers-102/jpg/*.jpg",
        f"{root}/flowers-102/imagelabels.mat",
        f"{root}/flowers-102/setid.mat",
        "datasets.Flowers102.download = True",
        "internet",
    ):
        assert expected in message, (expected, message)


def test_missing_root_defaults_to_ebmkit_data(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "shared"))
    with pytest.raises(DatasetNotFoundError, match=r"\$EBMKIT_DATA") as caught:
        create("dataset", "CIFAR10")
    assert f"{tmp_path / 'shared'}/cifar-10-batches-py/data_batch_1" in str(caught.value)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("CIFAR10", "cifar-10-batches-py/test_batch"),
        ("SVHN", "train_32x32.mat"),
        ("CelebA", "celeba/img_align_celeba/*.jpg"),
        ("MNIST", "MNIST/raw/train-images-idx3-ubyte"),
    ],
)
def test_every_torchvision_set_says_what_to_put_where(tmp_path, name, expected):
    with pytest.raises(DatasetNotFoundError) as caught:
        create("dataset", name, root=str(tmp_path))
    message = str(caught.value)
    assert f"dataset {name}" in message and str(tmp_path / expected) in message
    assert f"datasets.{name}.download = True" in message


def test_incomplete_flowers102_lists_the_missing_images(flowers):
    (flowers / "flowers-102" / "jpg" / "image_00003.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="image_00003.jpg"):
        create("dataset", "Flowers102", root=str(flowers))


def test_an_empty_image_folder_is_a_clear_error_without_download(tmp_path):
    (tmp_path / "nothing" / "class").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError) as caught:
        create("dataset", "ImageFolder", root=str(tmp_path / "nothing"))
    assert "<class>/<image>" in str(caught.value) and "download" not in str(caught.value)


# --- the image configs ----------------------------------------------------------------------

FAST = [
    "--bind",
    'DEVICE = "cpu"',
    "--bind",
    "energies.ShortRunConvNet.n_f = 8",
    "--bind",
    "trainers.Contrastive.batch_size = 4",
    "--bind",
    "datasets.Flowers102.in_memory = False",
]


def _run_flowers(config: str, root: Path, out: Path, sampler: str) -> int:
    return main(
        [
            "run",
            str(GIN / config),
            "--rounds",
            "2",
            "--out",
            str(out),
            "--bind",
            f'datasets.Flowers102.root = "{root}"',
            "--bind",
            f"samplers.{sampler}.n_steps = 3",
            *FAST,
        ]
    )


def _check_run(out: Path) -> None:
    grid = out / "samples" / "round-00000002.png"
    assert grid.is_file()
    with Image.open(grid) as image:
        assert image.size[0] > 32  # a grid of 32×32 samples
    assert (out / "checkpoints" / "round-00000002.pt").is_file()
    operative = (out / "operative_config.gin").read_text()
    assert "energies.ShortRunConvNet" in operative and "n_rounds = 2" in operative


def test_langevin_flowers_config_runs_end_to_end(flowers, tmp_path, capsys):
    assert _run_flowers("langevin_flowers.gin", flowers, tmp_path / "run", "Langevin") == 0
    _check_run(tmp_path / "run")
    missing = _run_flowers("langevin_flowers.gin", tmp_path / "none", tmp_path / "r2", "Langevin")
    assert missing == 1
    error = capsys.readouterr().err
    assert "dataset Flowers102 not found" in error and "flowers-102/setid.mat" in error


def test_stanley_flowers_config_runs_end_to_end(flowers, tmp_path, capsys):
    pytest.importorskip("ebmkit_stanley")
    assert _run_flowers("stanley_flowers.gin", flowers, tmp_path / "run", "Stanley") == 0
    _check_run(tmp_path / "run")
    assert "Stanley.legacy_code = True" in (tmp_path / "run" / "operative_config.gin").read_text()
    assert _run_flowers("stanley_flowers.gin", tmp_path / "none", tmp_path / "r2", "Stanley") == 1
    assert "datasets.Flowers102.download = True" in capsys.readouterr().err


@pytest.mark.parametrize(
    "config",
    ["langevin_flowers.gin", "stanley_flowers.gin", "stanley_cifar10.gin", "stanley_celeba.gin"],
)
def test_image_configs_parse(config, capsys):
    if config.startswith("stanley"):
        pytest.importorskip("ebmkit_stanley")
    reset_registry()
    assert main(["config", str(GIN / config)]) == 0
    printed = capsys.readouterr().out
    assert "Contrastive.betas = (0.9, 0.999)" in printed
    assert "Noise.shape = (3, 32, 32)" in printed


def test_dequantised_batches_resume_exactly_from_loader_and_rng_state():
    dataset = create("dataset", "Digits", dequantize_std=0.03)
    loader = ResumableLoader(dataset, batch_size=8, seed=3)
    next(loader)
    state, rng = loader.state_dict(), torch.get_rng_state()
    expected = next(loader)
    resumed = ResumableLoader(dataset, batch_size=8, seed=3)
    resumed.load_state_dict(state)
    torch.set_rng_state(rng)
    assert torch.equal(next(resumed), expected)


def test_data_grid_and_energy_histograms(flowers, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ebmkit.tracking.images import log_data_grid, log_energy_histograms
    from ebmkit.tracking.run_logger import RunLogger

    dataset = create("dataset", "Flowers102", root=str(flowers), dequantize_std=0.03)
    logger = RunLogger(tmp_path / "run")
    before = torch.get_rng_state()
    path = log_data_grid(logger, dataset, tmp_path / "run" / "samples")
    assert torch.equal(torch.get_rng_state(), before)  # resume stays exact
    with Image.open(path) as image:
        assert image.size == (4 * 34 + 2, 34 + 2)  # the 4 training images, 2-pixel padding

    class _Round:
        index = 7
        energy_data = torch.randn(16)
        energy_model = torch.randn(16) + 1

    log_energy_histograms(logger, _Round())
    logger.close()
    events = EventAccumulator(str(tmp_path / "run" / "tb")).Reload()
    assert {"energy/data_hist", "energy/samples_hist"} <= set(events.Tags()["histograms"])
    assert "data/grid" in events.Tags()["images"]
    assert log_data_grid(logger, create("dataset", "TwoMoons"), tmp_path / "x") is None
