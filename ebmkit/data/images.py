r"""Image datasets from a local root in torchvision's folder layouts, scaled to [−1, 1].

Every factory returns an `ImageDataset` whose items are `(x, label)`: x a float tensor
(C, H, W) in [−1, 1] (plus optional Gaussian dequantisation noise), label an int. The root
is `$EBMKIT_DATA` if set, else `./data`; each set sits in torchvision's own layout below it.
Nothing is downloaded unless a config says `datasets.<Name>.download = True`; a missing or
incomplete folder raises `DatasetNotFoundError` naming the files expected and where.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from ebmkit.errors import DatasetNotFoundError

__all__ = [
    "DATA_ROOT_ENV",
    "ImageDataset",
    "celeba",
    "cifar10",
    "data_root",
    "flowers102",
    "image_folder",
    "mnist",
    "svhn",
]

DATA_ROOT_ENV = "EBMKIT_DATA"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def data_root(root: str | os.PathLike[str] | None = None) -> Path:
    """`root` if given, else `$EBMKIT_DATA` if set, else `./data`."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(DATA_ROOT_ENV) or "data")


def _root_source(root: str | os.PathLike[str] | None) -> str:
    if root is not None:
        return "the `root` binding"
    return f"${DATA_ROOT_ENV}" if os.environ.get(DATA_ROOT_ENV) else "the default ./data"


class ImageDataset(Dataset):
    """Items `(x, label)`: x = the image as floats in [−1, 1], plus N(0, σ²) per item if σ > 0.

    The noise (dequantisation, σ = 0.03 in the short-run / STANLEY code) is drawn in
    `__getitem__` from the global torch RNG. ebmkit's loader runs in-process (no workers), so
    that RNG is the one a checkpoint saves and resume stays exact; with loader workers each
    worker would draw from its own seeded copy instead.

    Arguments:
        base: a dataset whose items are (image, label), image a PIL image or uint8 tensor.
        transform: maps an image to a uint8 tensor (C, H, W).
        dequantize_std: σ of the per-item Gaussian noise (0: none). Values are not clamped
            afterwards, as in the reference code.
        in_memory: decode and transform every image once, at construction (fast epochs for
            sets stored as image files, e.g. Flowers102; CelebA at 32² needs ~0.6 GB).
        name: a name for messages and cached statistics, e.g. "Flowers102-train".
    """

    def __init__(
        self,
        base: Any,
        transform: Callable[[Any], Tensor] | None = None,
        *,
        dequantize_std: float = 0.0,
        in_memory: bool = False,
        name: str = "images",
    ) -> None:
        if dequantize_std < 0:
            raise ValueError(f"dequantize_std must be >= 0, got {dequantize_std}")
        self.base = base
        self.transform = transform
        self.dequantize_std = float(dequantize_std)
        self.name = name
        self._images: Tensor | None = None
        self._labels: list[int] | None = None
        if in_memory:
            pairs = [self._load(index) for index in range(len(base))]
            self._images = torch.stack([image for image, _ in pairs])
            self._labels = [label for _, label in pairs]

    def __len__(self) -> int:
        return len(self.base) if self._images is None else len(self._images)

    def _load(self, index: int) -> tuple[Tensor, int]:
        image, label = self.base[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, _as_label(label)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if self._images is not None and self._labels is not None:
            image, label = self._images[index], self._labels[index]
        else:
            image, label = self._load(index)
        x = image.float().div(255).mul(2).sub(1) if image.dtype == torch.uint8 else image
        if self.dequantize_std > 0:
            x = x + self.dequantize_std * torch.randn_like(x)
        return x, label

    def __repr__(self) -> str:
        return f"ImageDataset({self.name}, {len(self)} images)"


def _as_label(label: Any) -> int:
    """An int label (torchvision sets give ints, 0-d tensors, or None)."""
    if isinstance(label, Tensor) and label.numel() == 1:
        return int(label)
    return int(label) if isinstance(label, int) else 0


def _image_transform(
    image_size: int, channels: int, center_crop: int | None
) -> Callable[[Any], Tensor]:
    """PIL image → channels → [center crop] → resize (shorter side) → center crop → uint8."""
    from torchvision import transforms

    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    mode = "L" if channels == 1 else "RGB"
    steps: list[Callable[[Any], Any]] = [lambda image: image.convert(mode)]
    if center_crop is not None:
        steps.append(transforms.CenterCrop(center_crop))
    steps += [
        transforms.Resize(image_size),
        transforms.CenterCrop(image_size),
        transforms.PILToTensor(),
    ]
    return transforms.Compose(steps)


def _files(folder: Path, names: Sequence[str]) -> list[tuple[Path, str]]:
    return [(folder / name, str(folder / name)) for name in names]


def _missing(paths: Sequence[Path]) -> list[Path]:
    return [path for path in paths if not path.exists()]


def _not_found(
    name: str,
    root: Path,
    source: str,
    expected: Sequence[str],
    missing: Sequence[Path | str],
    *,
    downloadable: bool = True,
    cause: BaseException | None = None,
) -> DatasetNotFoundError:
    """The one message a missing or incomplete dataset folder gets."""
    problem = (
        f"missing {', '.join(str(path) for path in missing)}"
        if missing
        else "the files are there but torchvision cannot read them (incomplete or corrupted?)"
    )
    message = (
        f"dataset {name} not found under root {root} (from {source}): {problem}. "
        f"{name} expects {'; '.join(expected)}. Put the files there, or point "
        f'`datasets.{name}.root = "..."` (or ${DATA_ROOT_ENV}) at the folder that holds them'
    )
    if downloadable:
        message += (
            f", or set `datasets.{name}.download = True` in the config to fetch them where "
            f"internet exists"
        )
    if cause is not None:
        message += f" [{type(cause).__name__}: {cause}]"
    return DatasetNotFoundError(message)


def _build(
    name: str,
    root: str | os.PathLike[str] | None,
    expected: Callable[[Path], list[tuple[Path, str]]],
    construct: Callable[[Path], Any],
    *,
    download: bool,
    downloadable: bool = True,
) -> Any:
    """Check the expected paths (unless downloading), then build torchvision's dataset.

    `expected(folder)` lists (path that must exist, how to describe what goes there).
    """
    folder = data_root(root)
    source = _root_source(root)
    paths = [path for path, _ in expected(folder)]
    described = [description for _, description in expected(folder)]
    if not download and (missing := _missing(paths)):
        raise _not_found(name, folder, source, described, missing, downloadable=downloadable)
    try:
        return construct(folder)
    except (RuntimeError, OSError, ValueError, KeyError) as error:
        raise _not_found(
            name,
            folder,
            source,
            described,
            _missing(paths),
            downloadable=downloadable,
            cause=error,
        ) from error


def _torchvision_datasets() -> Any:
    """torchvision.datasets, imported on first use (it adds seconds to every `ebmkit` start)."""
    import torchvision.datasets

    return torchvision.datasets


def _check_split(name: str, split: str, splits: Sequence[str]) -> None:
    if split not in splits:
        raise ValueError(f"{name} split must be one of {', '.join(splits)}; got {split!r}")


def _finish(
    base: Any,
    name: str,
    split: str,
    image_size: int,
    channels: int,
    center_crop: int | None,
    dequantize_std: float,
    in_memory: bool,
) -> ImageDataset:
    return ImageDataset(
        base,
        _image_transform(image_size, channels, center_crop),
        dequantize_std=dequantize_std,
        in_memory=in_memory,
        name=f"{name}-{split}",
    )


def cifar10(
    root: str | None = None,
    split: str = "train",
    image_size: int = 32,
    channels: int = 3,
    center_crop: int | None = None,
    dequantize_std: float = 0.0,
    in_memory: bool = False,
    download: bool = False,
) -> ImageDataset:
    """CIFAR-10 (torchvision layout `<root>/cifar-10-batches-py/`), split train | test.

    Arguments:
        root: the data root (default `$EBMKIT_DATA`, else `./data`).
        split: "train" (50k) or "test" (10k).
        image_size: resize the shorter side to this, then center-crop a square.
        channels: 3 (RGB) or 1 (grayscale).
        center_crop: crop this square from the center before resizing (None: none).
        dequantize_std: σ of Gaussian noise added to each item (0.03 in the STANLEY code).
        in_memory: transform every image once, at construction.
        download: fetch the files first (needs internet).
    """
    _check_split("CIFAR10", split, ("train", "test"))
    batches = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    base = _build(
        "CIFAR10",
        root,
        lambda folder: _files(folder / "cifar-10-batches-py", batches),
        lambda folder: _cifar10_class()(folder, train=split == "train", download=download),
        download=download,
    )
    return _finish(
        base, "CIFAR10", split, image_size, channels, center_crop, dequantize_std, in_memory
    )


def svhn(
    root: str | None = None,
    split: str = "train",
    image_size: int = 32,
    channels: int = 3,
    center_crop: int | None = None,
    dequantize_std: float = 0.0,
    in_memory: bool = False,
    download: bool = False,
) -> ImageDataset:
    """SVHN cropped digits (torchvision layout `<root>/<split>_32x32.mat`), train | test | extra.

    Arguments: as `cifar10`.
    """
    _check_split("SVHN", split, ("train", "test", "extra"))
    base = _build(
        "SVHN",
        root,
        lambda folder: _files(folder, [f"{split}_32x32.mat"]),
        lambda folder: _torchvision_datasets().SVHN(folder, split=split, download=download),
        download=download,
    )
    return _finish(
        base, "SVHN", split, image_size, channels, center_crop, dequantize_std, in_memory
    )


_CELEBA_FILES = (
    "list_eval_partition.txt",
    "identity_CelebA.txt",
    "list_attr_celeba.txt",
    "list_bbox_celeba.txt",
    "list_landmarks_align_celeba.txt",
)


def celeba(
    root: str | None = None,
    split: str = "train",
    image_size: int = 32,
    channels: int = 3,
    center_crop: int | None = 140,
    dequantize_std: float = 0.0,
    in_memory: bool = False,
    download: bool = False,
) -> ImageDataset:
    """CelebA aligned faces (torchvision layout `<root>/celeba/`), train | valid | test | all.

    Labels are identities. The default 140-pixel center crop keeps the face (the usual
    preprocessing of the short-run EBM / GAN literature) before resizing to `image_size`.

    Arguments: as `cifar10`.
    """
    _check_split("CelebA", split, ("train", "valid", "test", "all"))
    base = _build(
        "CelebA",
        root,
        lambda folder: (
            [(folder / "celeba" / "img_align_celeba", f"{folder}/celeba/img_align_celeba/*.jpg")]
            + _files(folder / "celeba", _CELEBA_FILES)
        ),
        lambda folder: _torchvision_datasets().CelebA(
            folder, split=split, target_type="identity", download=download
        ),
        download=download,
    )
    return _finish(
        base, "CelebA", split, image_size, channels, center_crop, dequantize_std, in_memory
    )


def _cifar10_class() -> type:
    """torchvision's CIFAR10 with existence checks instead of its md5 checks.

    As for Flowers102: the md5 checks would reject re-packed copies and small test folders
    in the same layout; a corrupt batch still fails when pickle reads it.
    """
    import pickle

    import torchvision

    class CIFAR10(torchvision.datasets.CIFAR10):
        def _check_integrity(self) -> bool:
            folder = Path(self.root) / self.base_folder
            return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

        def _load_meta(self) -> None:
            path = Path(self.root) / self.base_folder / self.meta["filename"]
            if not path.is_file():
                raise RuntimeError(f"CIFAR10: the metadata file {path} is missing")
            with open(path, "rb") as infile:
                self.classes = pickle.load(infile, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {name: index for index, name in enumerate(self.classes)}

    return CIFAR10


def _flowers102_class() -> type:
    """torchvision's Flowers102 with an existence check instead of its md5 check.

    The md5 check would reject re-packed copies and small test folders in the same layout;
    a corrupt .mat file still fails when scipy reads it, and missing images are listed.
    """
    import torchvision

    class Flowers102(torchvision.datasets.Flowers102):
        def _check_integrity(self) -> bool:
            return self._images_folder.is_dir() and all(
                (self._base_folder / file).is_file() for file in ("imagelabels.mat", "setid.mat")
            )

    return Flowers102


def flowers102(
    root: str | None = None,
    split: str = "train",
    image_size: int = 32,
    channels: int = 3,
    center_crop: int | None = None,
    dequantize_std: float = 0.0,
    in_memory: bool = False,
    download: bool = False,
) -> ImageDataset:
    """Oxford 102 Flowers (torchvision layout `<root>/flowers-102/`), train | val | test | all.

    "all" joins the three splits (8189 images; the usual choice for generative models).

    Arguments: as `cifar10`.
    """
    _check_split("Flowers102", split, ("train", "val", "test", "all"))
    base_folder = data_root(root) / "flowers-102"
    splits = ("train", "val", "test") if split == "all" else (split,)

    def expected(folder: Path) -> list[tuple[Path, str]]:
        images = folder / "flowers-102" / "jpg"
        return [(images, f"{images}/*.jpg")] + _files(
            folder / "flowers-102", ["imagelabels.mat", "setid.mat"]
        )

    def construct(folder: Path) -> Any:
        flowers = _flowers102_class()
        parts = [flowers(folder, split=part, download=download) for part in splits]
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    base = _build("Flowers102", root, expected, construct, download=download)
    parts = base.datasets if isinstance(base, ConcatDataset) else [base]
    absent = [file for part in parts for file in part._image_files if not file.is_file()]
    if absent:
        shown = [str(file) for file in absent[:3]] + (["..."] if len(absent) > 3 else [])
        raise _not_found(
            "Flowers102",
            base_folder.parent,
            _root_source(root),
            [f"{base_folder}/jpg/image_NNNNN.jpg for every id in setid.mat"],
            [f"{len(absent)} image(s) listed in setid.mat ({', '.join(shown)})"],
        )
    return _finish(
        base, "Flowers102", split, image_size, channels, center_crop, dequantize_std, in_memory
    )


def mnist(
    root: str | None = None,
    split: str = "train",
    image_size: int = 28,
    channels: int = 1,
    center_crop: int | None = None,
    dequantize_std: float = 0.0,
    in_memory: bool = False,
    download: bool = False,
) -> ImageDataset:
    """MNIST (torchvision layout `<root>/MNIST/raw/`), split train | test; grayscale by default.

    Arguments: as `cifar10` (channels=3 repeats the gray level).
    """
    _check_split("MNIST", split, ("train", "test"))
    files = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ]
    base = _build(
        "MNIST",
        root,
        lambda folder: _files(folder / "MNIST" / "raw", files),
        lambda folder: _torchvision_datasets().MNIST(
            folder, train=split == "train", download=download
        ),
        download=download,
    )
    return _finish(
        base, "MNIST", split, image_size, channels, center_crop, dequantize_std, in_memory
    )


def image_folder(
    root: str = "data/images",
    image_size: int = 32,
    channels: int = 3,
    center_crop: int | None = None,
    dequantize_std: float = 0.0,
    in_memory: bool = False,
) -> ImageDataset:
    """Any images in torchvision's ImageFolder layout: `<root>/<class>/<image>.png|jpg|...`.

    Arguments: as `cifar10`; `root` is the folder holding the class folders.
    """
    folder = Path(root)
    expected = [f"{folder}/<class>/<image>{{{','.join(_IMAGE_SUFFIXES)}}}"]
    classes = [path for path in folder.iterdir() if path.is_dir()] if folder.is_dir() else []
    if not any(
        file.suffix.lower() in _IMAGE_SUFFIXES for path in classes for file in path.iterdir()
    ):
        missing = [folder if not folder.is_dir() else f"class folders with images in {folder}"]
        raise _not_found(
            "ImageFolder", folder, "the `root` binding", expected, missing, downloadable=False
        )
    try:
        base = _torchvision_datasets().ImageFolder(str(folder))
    except (RuntimeError, OSError, ValueError) as error:
        raise _not_found(
            "ImageFolder",
            folder,
            "the `root` binding",
            expected,
            [],
            downloadable=False,
            cause=error,
        ) from error
    return _finish(
        base,
        "ImageFolder",
        folder.name,
        image_size,
        channels,
        center_crop,
        dequantize_std,
        in_memory,
    )
