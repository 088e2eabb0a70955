"""Toy 2-D datasets with exact samplers and exact normalized log-densities."""

from __future__ import annotations

from ebmkit.data.toy.base import GaussianMixture2D, ToyDataset
from ebmkit.data.toy.curves import SwissRoll, TwoMoons
from ebmkit.data.toy.mixtures import EightGaussians, GaussianMixture
from ebmkit.data.toy.shapes import Checkerboard, Pinwheel, Rings

__all__ = [
    "TOY_DATASETS",
    "Checkerboard",
    "EightGaussians",
    "GaussianMixture",
    "GaussianMixture2D",
    "Pinwheel",
    "Rings",
    "SwissRoll",
    "ToyDataset",
    "TwoMoons",
]


TOY_DATASETS: dict[str, type[ToyDataset]] = {
    cls.__name__: cls
    for cls in (
        EightGaussians,
        GaussianMixture,
        Rings,
        Checkerboard,
        TwoMoons,
        Pinwheel,
        SwissRoll,
    )
}
