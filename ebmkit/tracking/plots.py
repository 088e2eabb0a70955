"""Three-panel 2-D picture of data, learned density exp(-E) and samples, saved atomically."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from ebmkit.data.toy import ToyDataset
from ebmkit.metrics.toy import Energy, energy_grid

__all__ = ["density_figure", "save_figure"]

# Most points drawn per scatter panel: enough to show the shape, small enough for a light PNG.
_MAX_SCATTER_POINTS = 5000
# Constrained layout with equal-aspect axes settles in about three passes.
_MAX_LAYOUT_PASSES = 6


def _scatter(axes: Axes, points: Tensor, color: str) -> None:
    """Scatter at most `_MAX_SCATTER_POINTS` finite rows of `points` (n, 2) on `axes`."""
    points = points.detach().cpu()
    points = points[torch.isfinite(points).all(dim=1)][:_MAX_SCATTER_POINTS].double().numpy()
    axes.scatter(points[:, 0], points[:, 1], s=1.0, alpha=0.5, color=color, linewidths=0)


def _settle_layout(figure: Figure) -> None:
    """Run the constrained layout until the axes stop moving.

    Each pass places titles from the previous pass's axes (which equal aspect then shrinks),
    so a single layout, as done by the first savefig, can clip titles at the top edge.
    """
    for _ in range(_MAX_LAYOUT_PASSES):
        before = [axes.get_position().bounds for axes in figure.axes]
        figure.draw_without_rendering()
        if [axes.get_position().bounds for axes in figure.axes] == before:
            return


def density_figure(
    energy: Energy, samples: Tensor, dataset: ToyDataset, resolution: int = 200
) -> Figure:
    """Draw data, learned density and samples side by side on the dataset's bounds.

    Built on a bare matplotlib Figure (no pyplot), so no backend or global figure state is
    touched. The middle panel shows exp(-E) normalised over the grid to a density on
    [lo, hi]^2; the scatter panels show at most 5000 points (the first ones, non-finite
    sample rows dropped).

    Arguments:
        energy: callable or nn.Module mapping (B, 2) to energies (B,).
        samples: (n, 2) model samples.
        dataset: toy set whose stored points and bounds are drawn.
        resolution: cells per side of the density image.
    Returns:
        A Figure with three axes titled "data", "learned density exp(-E)" and "samples".
    """
    lo, hi = dataset.bounds
    points, energies = energy_grid(energy, (lo, hi), resolution)
    cell_area = ((hi - lo) / resolution) ** 2
    density = torch.softmax(-energies, dim=0) / cell_area
    image = density.reshape(resolution, resolution).numpy()

    figure = Figure(figsize=(12.0, 4.0), layout="constrained")
    data_axes, density_axes, sample_axes = figure.subplots(1, 3)
    _scatter(data_axes, dataset.points, "tab:blue")
    data_axes.set_title("data")
    density_axes.imshow(image, origin="lower", extent=(lo, hi, lo, hi), cmap="viridis")
    density_axes.set_title("learned density exp(-E)")
    _scatter(sample_axes, samples, "tab:orange")
    sample_axes.set_title("samples")
    for axes in (data_axes, density_axes, sample_axes):
        axes.set_xlim(lo, hi)
        axes.set_ylim(lo, hi)
        axes.set_aspect("equal")
    _settle_layout(figure)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike[str]) -> Path:
    """Write `figure` as a PNG at `path` atomically, then close it.

    The PNG goes to a temporary file in the same folder and is moved into place with
    os.replace, so readers never see a half-written image. The folder is created if needed.
    Closing releases a pyplot-managed figure from pyplot; a bare Figure needs nothing.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            figure.savefig(stream, format="png")
        os.chmod(temporary, 0o644)  # mkstemp makes 0600 files; give the PNG usual permissions
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is not None and figure.canvas.manager is not None:
            pyplot.close(figure)
    return path
