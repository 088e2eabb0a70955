r"""Pictures of an image run besides the sample grids: a data grid and energy histograms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ebmkit.initializers.data import first_tensor
from ebmkit.records import Round
from ebmkit.tracking.run_logger import RunLogger

__all__ = ["log_data_grid", "log_energy_histograms"]


def log_data_grid(logger: RunLogger, dataset: Any, folder: Path, n: int = 64) -> Path | None:
    """The first `n` training images as a grid: tensorboard `data/grid` and `folder/data.png`.

    Does nothing for datasets that are not images (C, H, W). Runs under `fork_rng`: items
    that draw dequantisation noise must not move the global RNG, or a resumed run would
    differ from an uninterrupted one.

    Returns:
        The PNG written, or None.
    """
    from torchvision.utils import make_grid, save_image

    if len(dataset) == 0:
        return None
    with torch.random.fork_rng(devices=[]):
        items = [first_tensor(dataset[i]) for i in range(min(n, len(dataset)))]
    if items[0].dim() != 3:
        return None
    images = torch.stack(items)
    grid = make_grid(images.clamp(-1, 1), nrow=8, normalize=True, value_range=(-1, 1))
    logger.image("data/grid", 0, grid)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data.png"
    save_image(grid, path)
    return path


def log_energy_histograms(logger: RunLogger, round: Round) -> None:
    """Histograms of the round's data and sample energies (tensorboard `energy/*_hist`)."""
    logger.writer.add_histogram("energy/data_hist", round.energy_data.float().cpu(), round.index)
    logger.writer.add_histogram(
        "energy/samples_hist", round.energy_model.float().cpu(), round.index
    )
