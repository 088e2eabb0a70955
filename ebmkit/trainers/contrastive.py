r"""The contrastive (maximum-likelihood) trainer: push data energy down, sample energy up."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import attrs
import torch
from torch import nn

from ebmkit.data.loader import ResumableLoader
from ebmkit.protocols import Initializer, Learnable, Sampler
from ebmkit.records import Round
from ebmkit.trainers.guard import check_round

__all__ = ["Contrastive", "RoundObserver"]


class RoundObserver(Protocol):
    """What the trainer tells its run (logging, pictures, checkpoints) as it goes."""

    def before_fit(self, trainer: Contrastive) -> None: ...

    def after_round(self, trainer: Contrastive, round: Round) -> None: ...

    def after_fit(self, trainer: Contrastive) -> None: ...


def _find_learnables(roots: Sequence[Any]) -> list[Learnable]:
    """Learnables among `roots` and their attrs fields, deduplicated by identity.

    One object may serve twice (a flow as initializer and as mirror map): it learns once.
    """
    found: dict[int, Learnable] = {}
    for root in roots:
        fields = attrs.fields(type(root)) if attrs.has(type(root)) else ()
        for candidate in (root, *(getattr(root, field.name) for field in fields)):
            if isinstance(candidate, Learnable):
                found.setdefault(id(candidate), candidate)
    return list(found.values())


@attrs.define(kw_only=True, eq=False)
class Contrastive:
    """Per round: data batch → initializer → sampler → energy loss → optimizer → Learnables.

    Loss = mean E(x_data) − mean E(x_model) + alpha·mean(E(x_data)² + E(x_model)²). The
    sampler's chains run on a detached copy of the energy's input, so only the loss above
    reaches the parameters. A Round record with every fact goes to each Learnable's `learn`,
    then to `initializer.update`, then to the observer (logging / checkpoints).

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
        max_energy_gap: the divergence guard also stops when |gap| exceeds this.
        learnables: extra Learnables to update each round (besides those found in the
            sampler and initializer).
        seed: the data shuffle seed.
        device: where the energy and chains live.

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
    max_energy_gap: float | None = None
    learnables: Sequence[Learnable] = ()
    seed: int = 0
    device: str = "cpu"
    round_index: int = attrs.field(default=0, init=False)
    optimizer: torch.optim.Optimizer = attrs.field(init=False)
    loader: ResumableLoader = attrs.field(init=False)
    all_learnables: list[Learnable] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.energy.to(self.device)
        self.optimizer = torch.optim.Adam(
            self.energy.parameters(),
            lr=self.learning_rate,
            betas=self.betas,
            weight_decay=self.weight_decay,
        )
        self.loader = ResumableLoader(self.dataset, self.batch_size, seed=self.seed)
        self.all_learnables = _find_learnables([self.sampler, self.initializer, *self.learnables])

    def train_round(self) -> Round:
        """One round; returns its Round record (raises DivergenceError on non-finite values)."""
        index = self.round_index + 1
        x_data = next(self.loader).to(self.device)
        init = self.initializer.sample(self.batch_size)
        result = self.sampler.sample(self.energy, init.x.to(self.device), self.n_steps)
        energy_data = self.energy(x_data)
        energy_model = self.energy(result.x)
        contrastive = energy_data.mean() - energy_model.mean()
        regulariser = self.alpha * (energy_data.square() + energy_model.square()).mean()
        loss = contrastive + regulariser
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parameters = [p for p in self.energy.parameters() if p.grad is not None]
        max_norm = float("inf") if self.grad_clip is None else self.grad_clip
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        energy_gap = energy_model.detach().mean() - energy_data.detach().mean()
        check_round(
            index,
            {
                "data energy": energy_data,
                "sample energy": energy_model,
                "loss": loss,
                "parameter gradient": grad_norm,
            },
            self.max_energy_gap,
            energy_gap,
        )
        self.optimizer.step()
        round = Round(
            index=index,
            x_data=x_data,
            init=init,
            result=result,
            energy_data=energy_data.detach(),
            energy_model=energy_model.detach(),
            losses={
                "loss/total": loss.detach(),
                "loss/contrastive": contrastive.detach(),
                "loss/regulariser": regulariser.detach(),
                "grad_norm": grad_norm.detach(),
            },
        )
        for learnable in self.all_learnables:
            for name, value in learnable.learn(round).items():
                round.losses[f"{type(learnable).__name__}/{name}"] = value.detach()
        self.initializer.update(round)
        self.round_index = index
        return round

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

    def stateful_components(self) -> dict[str, Any]:
        """Everything besides the energy whose state a checkpoint must hold."""
        parts: dict[str, Any] = {"sampler": self.sampler, "initializer": self.initializer}
        for number, learnable in enumerate(self.all_learnables):
            parts[f"learnable{number}"] = learnable
        return {
            name: part
            for name, part in parts.items()
            if callable(getattr(part, "state_dict", None))
            and callable(getattr(part, "load_state_dict", None))
        }

    def state_dict(self) -> dict[str, Any]:
        """The trainer's whole state: energy, optimizer, loader, components, round."""
        return {
            "round": self.round_index,
            "energy": self.energy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
            "components": {n: p.state_dict() for n, p in self.stateful_components().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.round_index = state["round"]
        self.energy.load_state_dict(state["energy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        parts = self.stateful_components()
        missing = set(state["components"]) ^ set(parts)
        if missing:
            raise ValueError(
                f"the checkpoint's components {sorted(state['components'])} do not match this "
                f"config's {sorted(parts)}; resume with the config the run was started with"
            )
        for name, part in parts.items():
            part.load_state_dict(state["components"][name])
