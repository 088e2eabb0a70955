r"""`trainers.DualMCMC`: the reference code's round order over `trainers.Contrastive`'s phases.

The code updates the generator and the inference model first, then regenerates x0′ = g(z)
with the updated generator (same z), reruns the EBM's chains from there and takes the energy
step on those fresh negatives (`fine_tune=True`). `learn_order` alone would score the EBM on
chains from the old generator, so this trainer adds a "refresh" phase; it copies no loop.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch

from ebmkit import Contrastive, RoundWork

__all__ = ["DualMCMC"]


@attrs.define(kw_only=True, eq=False)
class DualMCMC(Contrastive):
    """`trainers.Contrastive` in the Dual-MCMC reference code's order: G → I → refresh → E.

    Phases: data, initializer, sampler, a first scoring of the round (the `Round` record the
    Learnables learn from, without an autograd graph), learnables (the generator and the
    inference model of `initializers.Generator`), refresh (x0′ = g_{t+1}(z) with the round's
    z, the chains rerun, the energy loss on them), energy step, initializer update. Each round
    so costs two EBM chains, as in the code. Every `Contrastive` argument applies;
    `learn_order` is fixed by this order.

    Arguments:
        refresh_negatives: run the refresh phase (True, the code); False is the paper's order
            (the EBM learns from the x̃ the generator learned from), the same as
            `trainers.Contrastive` with ``learn_order = "before_energy_step"``.
    """

    refresh_negatives: bool = True

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.refresh_negatives and not callable(getattr(self.initializer, "regenerate", None)):
            raise TypeError(
                f"trainers.DualMCMC refreshes its negatives from the initializer's latents, "
                f"but {type(self.initializer).__name__} has no regenerate(init); use "
                f"@initializers.Generator() or set trainers.DualMCMC.refresh_negatives = False"
            )

    def phases(self) -> list[tuple[str, Callable[[RoundWork], None]]]:
        """data, initializer, sampler, energy_loss (scoring only), learnables, refresh,
        energy_step, initializer_update."""
        phases = [
            ("data", self.draw_data),
            ("initializer", self.start_chains),
            ("sampler", self.run_chains),
            ("energy_loss", self.score_round if self.refresh_negatives else self.energy_loss),
            ("learnables", self.learn),
        ]
        if self.refresh_negatives:
            phases.append(("refresh", self.refresh))
        phases += [
            ("energy_step", self.energy_step),
            ("initializer_update", self.update_initializer),
        ]
        return phases

    def score_round(self, work: RoundWork) -> None:
        """The round's record without a graph: its loss is recomputed after the refresh."""
        with torch.no_grad():
            self.energy_loss(work)

    def refresh(self, work: RoundWork) -> None:
        """Phase "refresh": x0′ = g(z) from the updated generator, the chains rerun on the
        current energy, and the energy loss on them (the round record now holds x̃′)."""
        work.init = self.initializer.regenerate(work.init, work.index).to(self.device)
        work.result = self.sampler.sample(self.energy, work.init, self.n_steps)
        self.energy_loss(work)
