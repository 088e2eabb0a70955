r"""Small inputs tests build: a finished Round for an initializer, image folders to read."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import scipy.io
import torch
from PIL import Image

from ebmkit.records import InitBatch, Round, SampleResult

__all__ = ["FLOWERS_COLOURS", "finished_round", "write_cifar10", "write_flowers102"]

FLOWERS_COLOURS = [(200, 30, 60), (20, 180, 90), (90, 90, 250), (250, 250, 10)]
"""The solid colours `write_flowers102` cycles through (JPEG keeps them within ±2 levels)."""


def finished_round(index: int, init: InitBatch, result: SampleResult) -> Round:
    """The Round an initializer's `update` reads: `init` and `result` (no data, no energies)."""
    empty = torch.zeros(0)
    return Round(
        index=index, x_data=empty, init=init, result=result, energy_data=empty, energy_model=empty
    )


def write_flowers102(root: Path, n_train: int = 4, n_val: int = 2, n_test: int = 2) -> Path:
    """A Flowers102 folder in torchvision's own format: flowers-102/jpg/image_NNNNN.jpg,
    imagelabels.mat (key "labels", 1-based classes per image id) and setid.mat (keys trnid,
    valid, tstid: 1-based image ids), as torchvision's Flowers102 reads them with loadmat.
    Image k is a solid `FLOWERS_COLOURS[(k - 1) % 4]`, (48 + k) × 40 pixels. Returns `root`.
    """
    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    n = n_train + n_val + n_test
    for image_id in range(1, n + 1):
        colour = FLOWERS_COLOURS[(image_id - 1) % len(FLOWERS_COLOURS)]
        image = Image.new("RGB", (48 + image_id, 40), colour)  # not square, not 32
        image.save(base / "jpg" / f"image_{image_id:05d}.jpg", quality=95)
    labels = np.array([[1 + (i % 5) for i in range(n)]], dtype=np.uint8)
    scipy.io.savemat(base / "imagelabels.mat", {"labels": labels})
    ids = np.arange(1, n + 1, dtype=np.uint16)
    scipy.io.savemat(
        base / "setid.mat",
        {
            "trnid": ids[:n_train][None],
            "valid": ids[n_train : n_train + n_val][None],
            "tstid": ids[n_train + n_val :][None],
        },
    )
    return root


CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"
]  # fmt: skip


def write_cifar10(root: Path, per_batch: int = 4, seed: int = 0) -> Path:
    """A CIFAR-10 folder in torchvision's own format: cifar-10-batches-py/data_batch_1..5 and
    test_batch (pickled dicts with "data", uint8 (N, 3072) rows in CHW order, and "labels")
    and batches.meta ("label_names"), `per_batch` random images per batch. Returns `root`.
    """
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, size=per_batch)]
        entry = {"batch_label": name, "data": data, "labels": labels}
        with open(base / name, "wb") as file:
            pickle.dump(entry, file)
    with open(base / "batches.meta", "wb") as file:
        pickle.dump({"label_names": CIFAR10_CLASSES, "num_vis": 3072}, file)
    return root
