r"""The CoopFlow plugin's hook. CoopFlow needs no component of its own.

Its round is the core's contrastive round with a shared flow: `initializers.Flow` starts the
chains at flow samples, `samplers.Langevin` revises them, the flow (`fit_on = "samples"`)
fits the revised samples by maximum likelihood and the energy takes its contrastive step.
The two updates (the paper's and the reference code's) are gin presets,
``gin/base/coopflow_paper.gin`` and ``gin/base/coopflow_code.gin``. The plugin is a package
so that ``ebmkit plugins`` lists it and its tests run those configs.
"""

from __future__ import annotations

import ebmkit
from ebmkit import Registry


@ebmkit.hookimpl
def ebmkit_register(registry: Registry) -> None:
    """Nothing to register: CoopFlow is assembled from `initializers.Flow`, `flows.*` and
    `samplers.Langevin` (see the module docstring)."""
