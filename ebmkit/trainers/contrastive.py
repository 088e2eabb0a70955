r"""The contrastive (maximum-likelihood) trainer: push data energy down, sample energy up."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
from torch import Tensor, nn

from ebmkit.compatibility import check_compatible, data_shape
from ebmkit.data.loader import ResumableLoader
from ebmkit.density import EnergyFunction, resolve_model_energy
from ebmkit.errors import DivergenceError
from ebmkit.learnables import component_roots, find_learnables
from ebmkit.learnables.module import (
    SCHEDULER_INTERVALS,
    LearnableModule,
    SchedulerFactory,
    step_per_epoch,
)
from ebmkit.protocols import Initializer, Learnable, RoundObserver, Sampler, Stateful
from ebmkit.records import InitBatch, Round, SampleResult
from ebmkit.runs import distributed
from ebmkit.trainers.guard import (
    BlowupGuard,
    agree_on_divergence,
    check_learnable,
    check_round,
)
from ebmkit.validators import one_of

__all__ = ["LEARN_ORDERS", "Contrastive", "RoundWork"]

LEARN_ORDERS = ("after_energy_step", "before_energy_step")
"""When the Learnables learn in a round, relative to the energy's optimizer step."""


@attrs.define(kw_only=True, eq=False)
class RoundWork:
    """What a round's phases have produced so far (filled in phase by phase).

    Arguments:
        index: the round's 1-based number.
        x_data: the data batch (phase "data").
        epoch: the loader's epoch `x_data` came from (phase "data").
        init: the chains' start (phase "initializer").
        result: the sampler's result (phase "sampler").
        energy_data, energy_model: E at data and samples, on the graph (phase "energy_loss").
        loss: the energy's total loss, on the graph (phase "energy_loss").
        losses: scalar losses logged for the round (every phase may add).
        round: the Round record every component sees (made once energies are known).
    """

    index: int
    x_data: Tensor | None = None
    epoch: int | None = None
    init: InitBatch | None = None
    result: SampleResult | None = None
    energy_data: Tensor | None = None
    energy_model: Tensor | None = None
    loss: Tensor | None = None
    losses: dict[str, Tensor] = attrs.field(factory=dict)
    round: Round | None = None


@attrs.define(kw_only=True, eq=False)
class Contrastive:
    """Maximum-likelihood EBM training, each round a sequence of named phases.

    data → initializer → sampler → energy_loss → energy_step → learnables →
    initializer_update (with ``learn_order = "before_energy_step"`` the Learnables learn
    before the energy's step, as Dual-MCMC's reference code does; its paper updates the
    energy first). Loss = mean E(x_data) − mean E(x_model) + alpha·mean(E(x_data)² +
    E(x_model)²). The chains run on a detached copy of the energy's input, so only this loss
    reaches the parameters. A Round record with every fact goes to each Learnable's `learn`,
    then to `initializer.update`, then to the observer (logging / checkpoints). A method
    needing another order overrides `phases()`, not the round.

    When it is built, the sampler, the initializer and the energy may refuse the combination
    (their `check_compatible`, see `ebmkit.compatibility`: a ConfigError saying why).

    Learnables are found once, when the trainer is built, among the sampler, the
    initializer and `learnables` (attrs fields, module children, containers, each object
    once; see `ebmkit.find_learnables`); each is moved to `device`, learns once per round,
    has its losses checked by the divergence guard and is saved under its path.

    Metrics and pictures score the model's density through `model_energy()`, not `energy`:
    `model_density` when bound, else the sampler's (then the initializer's) declared
    `model_energy(energy)`, else the energy itself (see `ebmkit.density`). With
    `energies.Tempered` as the energy, the energy itself is E/T: the run is scored on
    exp(−E/T), the density its chains target, with no binding.

    The energy's optimizer may have an LR scheduler, stepped after every energy step
    (``scheduler_interval = "round"``) or once per epoch of the data loader (``"epoch"``,
    before the step of the first round whose data batch is from a new epoch; the round's
    `Round.epoch` says which, so a Learnable's epoch scheduler steps at the same rounds).

    Arguments:
        energy: the energy network.
        sampler: the MCMC kernel producing negative samples.
        initializer: where chains start.
        dataset: the training data (items x or (x, label)).
        batch_size: data and chain batch size.
        n_rounds: number of rounds `fit` runs to.
        n_steps: sampler steps per round (default: the sampler's own `n_steps`).
        learning_rate, betas, weight_decay: Adam's; betas default to (0.0, 0.999), the
            EBM choice (no first-moment smoothing of a noisy contrastive gradient).
        alpha: weight of the energy-magnitude regulariser (IGEBM's L2 on energies).
        grad_clip: clip the parameters' gradient norm to this value (None: off).
        scheduler: a factory optimizer → LR scheduler for the energy's optimizer (None: a
            constant learning rate); in gin a reference without parentheses,
            ``trainers.Contrastive.scheduler = @torch.optim.lr_scheduler.ExponentialLR``,
            with ``torch.optim.lr_scheduler.ExponentialLR.gamma = 0.998``.
        scheduler_interval: "round" (default) or "epoch" (of the data loader).
        max_energy_gap: the divergence guard also stops when |gap| exceeds this.
        blowup_factor: the guard also stops when |gap| or the parameter-gradient norm
            exceeds this multiple of its running median (None: off); see `BlowupGuard`.
        blowup_window: how many recent rounds that running median covers.
        learnables: extra Learnables to update each round (besides those found in the
            sampler and initializer).
        learn_order: "after_energy_step" (default) or "before_energy_step".
        model_density: a callable energy → energy giving the density the run is scored on
            (e.g. `ebmkit.density.Tempered` for exp(−E/T), `FlowDensity` for a flow-only
            baseline); it overrides what the sampler or initializer declares. None: those,
            else the energy.
        seed: the data shuffle seed.
        device: where the energy, the chains and the Learnables live.

    References:
        Hinton (2002); Du & Mordatch (2019); Nijkamp et al. (2019, short-run MCMC).
    """

    energy: nn.Module
    sampler: Sampler
    initializer: Initializer
    dataset: Any
    batch_size: int = attrs.field(default=128, validator=attrs.validators.ge(1))
    n_rounds: int = attrs.field(default=1000, validator=attrs.validators.ge(0))
    n_steps: int | None = None
    learning_rate: float = attrs.field(default=1e-4, validator=attrs.validators.gt(0.0))
    betas: tuple[float, float] = attrs.field(default=(0.0, 0.999), converter=tuple)
    weight_decay: float = 0.0
    alpha: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    grad_clip: float | None = None
    scheduler: SchedulerFactory | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.is_callable())
    )
    scheduler_interval: str = attrs.field(default="round", validator=one_of(*SCHEDULER_INTERVALS))
    max_energy_gap: float | None = None
    blowup_factor: float | None = attrs.field(
        default=1e3, validator=attrs.validators.optional(attrs.validators.gt(1.0))
    )
    blowup_window: int = attrs.field(default=50, validator=attrs.validators.ge(1))
    learnables: Sequence[Learnable] = ()
    learn_order: str = attrs.field(default="after_energy_step", validator=one_of(*LEARN_ORDERS))
    model_density: Callable[[nn.Module], EnergyFunction] | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.is_callable())
    )
    seed: int = 0
    device: str = "cpu"
    round_index: int = attrs.field(default=0, init=False)
    optimizer: torch.optim.Optimizer = attrs.field(init=False)
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = attrs.field(init=False)
    scheduler_epoch: int = attrs.field(default=0, init=False)
    loader: ResumableLoader = attrs.field(init=False)
    all_learnables: dict[str, Learnable] = attrs.field(init=False)
    blowup: BlowupGuard = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # Every trainer is built through here: the components' declared incompatibilities
        # (`check_compatible`, see ebmkit.compatibility) refuse a combination before round 1.
        check_compatible(
            sampler=self.sampler,
            initializer=self.initializer,
            energy=self.energy,
            shape=data_shape(self.dataset),
            batch_size=self.batch_size,
        )
        self.energy.to(self.device)
        self.optimizer = torch.optim.Adam(
            self.energy.parameters(),
            lr=self.learning_rate,
            betas=self.betas,
            weight_decay=self.weight_decay,
        )
        self.lr_scheduler = None if self.scheduler is None else self.scheduler(self.optimizer)
        self.loader = ResumableLoader(
            self.dataset,
            self.batch_size,
            seed=self.seed,
            rank=distributed.rank(),
            world_size=distributed.world_size(),
        )
        self.blowup = BlowupGuard(factor=self.blowup_factor, window=self.blowup_window)
        self.all_learnables = find_learnables(self.learnable_roots(), skip=[self.energy])
        for learnable in self.all_learnables.values():
            if isinstance(learnable, nn.Module):
                learnable.to(self.device)
            # Build each LearnableModule's optimizer (and LR scheduler) now, while the run's
            # gin config is active: a scheduler bound as a gin factory reads its parameters
            # when called, and the operative config saved in checkpoints records only what
            # was called before it was captured (after the trainer is built).
            if isinstance(learnable, LearnableModule):
                learnable.optimizer  # noqa: B018

    def learnable_roots(self) -> dict[str, Any]:
        """Where Learnables are looked for, in path order (the first path of a shared one wins)."""
        return component_roots(self.initializer, self.sampler, self.learnables)

    def model_energy(self) -> EnergyFunction:
        """The energy of the model density that metrics and pictures score.

        `model_density(energy)` when bound; else the sampler's `model_energy(energy)` (the
        density the chains target, e.g. E − log λ for a tilted flow-MCMC), else the
        initializer's; else `energy` itself. Made afresh on each call (cheap), and meant to be
        evaluated under `torch.no_grad` (the toy metrics do).
        """
        return resolve_model_energy(
            self.energy,
            model_density=self.model_density,
            components=(("sampler", self.sampler), ("initializer", self.initializer)),
        )

    # The phases -------------------------------------------------------------------------

    def phases(self) -> list[tuple[str, Callable[[RoundWork], None]]]:
        """The round's phases in order, by name; `learn_order` places the Learnables."""
        learn = ("learnables", self.learn)
        phases = [
            ("data", self.draw_data),
            ("initializer", self.start_chains),
            ("sampler", self.run_chains),
            ("energy_loss", self.energy_loss),
            ("energy_step", self.energy_step),
            ("initializer_update", self.update_initializer),
        ]
        position = 4 if self.learn_order == "before_energy_step" else 5
        phases.insert(position, learn)
        return phases

    def draw_data(self, work: RoundWork) -> None:
        """Phase "data": the next data batch and the loader's epoch it came from."""
        work.x_data = next(self.loader).to(self.device)
        work.epoch = self.loader.epoch

    def start_chains(self, work: RoundWork) -> None:
        """Phase "initializer": where the chains start (and any states to continue)."""
        work.init = self.initializer.sample(self.batch_size).to(self.device)

    def run_chains(self, work: RoundWork) -> None:
        """Phase "sampler": the chains run on the current energy."""
        work.result = self.sampler.sample(self.energy, work.init, self.n_steps)

    def energy_loss(self, work: RoundWork) -> None:
        """Phase "energy_loss": the contrastive loss (+ regulariser); makes the Round record."""
        energy_data = self.energy(work.x_data)
        energy_model = self.energy(work.result.x)
        contrastive = energy_data.mean() - energy_model.mean()
        regulariser = self.alpha * (energy_data.square() + energy_model.square()).mean()
        work.energy_data, work.energy_model = energy_data, energy_model
        work.loss = contrastive + regulariser
        work.losses.update(
            {
                "loss/total": work.loss.detach(),
                "loss/contrastive": contrastive.detach(),
                "loss/regulariser": regulariser.detach(),
            }
        )
        work.round = Round(
            index=work.index,
            x_data=work.x_data,
            init=work.init,
            result=work.result,
            energy_data=energy_data.detach(),
            energy_model=energy_model.detach(),
            losses=work.losses,
            energy=self.energy,
            epoch=work.epoch,
        )

    def energy_step(self, work: RoundWork) -> None:
        """Phase "energy_step": backward, clip, divergence guard, the optimizer's step (and
        the scheduler's: per epoch before it, per round after it)."""
        self.optimizer.zero_grad(set_to_none=True)  # also drops what a Learnable left there
        work.loss.backward()
        parameters = [p for p in self.energy.parameters() if p.grad is not None]
        watched = {
            "data energy": work.energy_data,
            "sample energy": work.energy_model,
            "loss": work.loss,
        }
        if distributed.is_distributed():
            # This rank's energies first (the averaged gradient would carry one rank's NaN to
            # all, hiding where it came from), then the gradients averaged over ranks.
            local = _divergence_of(
                check_round,
                work.index,
                watched,
                None,
                work.round.energy_gap,
                torch.zeros((), device=work.loss.device),
            )
            agree_on_divergence(local, work.index)
            distributed.all_reduce_gradients(parameters)
        max_norm = float("inf") if self.grad_clip is None else self.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        work.losses["grad_norm"] = grad_norm.detach()
        error = _divergence_of(
            check_round,
            work.index,
            {**watched, "parameter gradient": grad_norm},
            self.max_energy_gap,
            work.round.energy_gap,
            grad_norm,
            self.blowup,
        )
        agree_on_divergence(error, work.index)
        scheduler = self.lr_scheduler
        if scheduler is not None and self.scheduler_interval == "epoch":
            owner = "trainers.Contrastive (the energy's optimizer)"
            self.scheduler_epoch = step_per_epoch(
                scheduler, self.scheduler_epoch, work.round, owner
            )
        self.optimizer.step()
        if scheduler is not None and self.scheduler_interval == "round":
            scheduler.step()
        if distributed.is_distributed():  # as DDP does: rank 0's buffers (BatchNorm's) for all
            distributed.broadcast_module(self.energy, buffers_only=True)
        work.loss = None  # the graph is no longer needed

    def learn(self, work: RoundWork) -> None:
        """Phase "learnables": each Learnable's update once, its losses checked and logged."""
        for path, learnable in self.all_learnables.items():
            losses: dict[str, torch.Tensor] = {}
            error = None
            try:
                losses = learnable.learn(work.round)
                check_learnable(work.index, path, learnable, losses)
            except DivergenceError as caught:
                error = caught
            agree_on_divergence(error, work.index)  # one rank's divergence stops them all
            for name, value in losses.items():
                work.losses[f"{path}/{name}"] = value.detach()

    def update_initializer(self, work: RoundWork) -> None:
        """Phase "initializer_update": the initializer learns from the round."""
        self.initializer.update(work.round)

    # The loop ----------------------------------------------------------------------------

    def train_round(self) -> Round:
        """One round, phase by phase; returns its Round record.

        Raises DivergenceError on non-finite values (energies, loss, gradient, a Learnable's
        losses), naming the round and what went wrong.
        """
        work = RoundWork(index=self.round_index + 1)
        for _, phase in self.phases():
            phase(work)
        self.round_index = work.index
        return work.round

    def fit(self, observer: RoundObserver | None = None) -> Contrastive:
        """Train from the current round to `n_rounds`, reporting each round to `observer`."""
        if observer is not None:
            observer.before_fit(self)
        while self.round_index < self.n_rounds:
            round = self.train_round()
            if observer is not None:
                observer.after_round(self, round)
        if observer is not None:
            observer.after_fit(self)
        return self

    # Checkpoints -------------------------------------------------------------------------

    def stateful_components(self) -> dict[str, Stateful]:
        """The sampler and initializer when they hold state (and are not Learnables)."""
        learnable_ids = {id(learnable) for learnable in self.all_learnables.values()}
        parts = {"sampler": self.sampler, "initializer": self.initializer}
        return {
            name: part
            for name, part in parts.items()
            if isinstance(part, Stateful) and id(part) not in learnable_ids
        }

    def state_dict(self) -> dict[str, Any]:
        """The trainer's whole state: energy, optimizer (and its scheduler), loader, components,
        Learnables, round."""
        scheduler = self.lr_scheduler
        return {
            "round": self.round_index,
            "energy": self.energy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if scheduler is None else scheduler.state_dict(),
            "scheduler_epoch": self.scheduler_epoch,
            "loader": self.loader.state_dict(),
            "components": {n: p.state_dict() for n, p in self.stateful_components().items()},
            "learnables": {p: part.state_dict() for p, part in self.all_learnables.items()},
            "guard": self.blowup.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned; refuses a checkpoint of other components."""
        parts = self.stateful_components()
        if set(state["components"]) != set(parts):
            raise ValueError(
                f"the checkpoint's components {sorted(state['components'])} do not match this "
                f"config's {sorted(parts)}; resume with the config the run was started with"
            )
        saved = state.get("learnables", {})
        if set(saved) != set(self.all_learnables):
            raise ValueError(
                f"the checkpoint's Learnables are at {sorted(saved) or 'no path'} but this "
                f"config's are at {sorted(self.all_learnables) or 'no path'}; resume with "
                f"the config the run was started with"
            )
        saved_scheduler = state.get("scheduler")  # checkpoints before schedulers have none
        if saved_scheduler is not None and self.lr_scheduler is None:
            raise ValueError(
                "the checkpoint holds an LR scheduler for the energy's optimizer but this config "
                "builds none; bind the same trainers.Contrastive.scheduler to resume"
            )
        self.round_index = state["round"]
        self.energy.load_state_dict(state["energy"])
        self.optimizer.load_state_dict(state["optimizer"])
        if saved_scheduler is not None:
            self.lr_scheduler.load_state_dict(saved_scheduler)
        self.scheduler_epoch = int(state.get("scheduler_epoch", 0))
        self.loader.load_state_dict(state["loader"])
        for name, part in parts.items():
            part.load_state_dict(state["components"][name])
        for path, learnable in self.all_learnables.items():
            learnable.load_state_dict(saved[path])
        self.blowup.load_state_dict(state.get("guard", {}))


def _divergence_of(check: Callable[..., None], *arguments: Any) -> DivergenceError | None:
    """The DivergenceError `check(*arguments)` raises, or None when it passes."""
    try:
        check(*arguments)
    except DivergenceError as error:
        return error
    return None
