r"""ebmkit: energy-based models with swappable samplers, initializers and trainers.

The public API: plugins import only what is re-exported here.
"""

from ebmkit.autograd import differentiable_chains, energy_and_grad, is_differentiable
from ebmkit.checkpoint.files import load_checkpoint
from ebmkit.energies.tempered import TemperedEnergy
from ebmkit.errors import (
    CheckpointError,
    ConfigError,
    DatasetNotFoundError,
    DivergenceError,
    EbmkitError,
    IncompatibleError,
    PluginLoadError,
    UnknownComponentError,
)
from ebmkit.hookspecs import hookimpl
from ebmkit.learnables import LearnableModule, find_learnables
from ebmkit.learnables.module import SchedulerFactory
from ebmkit.protocols import (
    Energy,
    Flow,
    Initializer,
    Learnable,
    RoundObserver,
    Sampler,
    Stateful,
    StepScalable,
    Trainer,
)
from ebmkit.records import (
    LONE_STEP,
    ChainState,
    InitBatch,
    Round,
    SampleResult,
    StepContext,
    StepInfo,
)
from ebmkit.registry import Registry, components, create, get_registry, reset_registry
from ebmkit.runs.draw import SamplingParts, build_parts, find_checkpoint
from ebmkit.samplers.base import EvaluationCounts, MarkovKernel, initialize, kept_from_previous
from ebmkit.samplers.composite import Composite
from ebmkit.samplers.langevin import Langevin
from ebmkit.samplers.mala import MALA
from ebmkit.samplers.moves import (
    batch_view,
    clip_gradient,
    diagonal_gaussian_log_prob,
    gaussian_noise,
    metropolis_accept,
    select_chains,
    ula_noise_scale,
    uniform,
)
from ebmkit.samplers.validators import check_clamp
from ebmkit.trainers.contrastive import Contrastive, RoundWork
from ebmkit.validators import one_of

__version__ = "0.1.0"

__all__ = [
    "Composite",
    "Contrastive",
    "RoundWork",
    "SamplingParts",
    "build_parts",
    "find_checkpoint",
    "load_checkpoint",
    "SchedulerFactory",
    "EvaluationCounts",
    "Langevin",
    "MALA",
    "one_of",
    "Flow",
    "LearnableModule",
    "initialize",
    "RoundObserver",
    "find_learnables",
    "LONE_STEP",
    "StepContext",
    "check_clamp",
    "differentiable_chains",
    "is_differentiable",
    "kept_from_previous",
    "ChainState",
    "CheckpointError",
    "ConfigError",
    "DatasetNotFoundError",
    "DivergenceError",
    "EbmkitError",
    "IncompatibleError",
    "Energy",
    "InitBatch",
    "Initializer",
    "Learnable",
    "MarkovKernel",
    "PluginLoadError",
    "Registry",
    "Round",
    "SampleResult",
    "Sampler",
    "Stateful",
    "StepScalable",
    "StepInfo",
    "TemperedEnergy",
    "Trainer",
    "UnknownComponentError",
    "batch_view",
    "clip_gradient",
    "components",
    "create",
    "diagonal_gaussian_log_prob",
    "energy_and_grad",
    "gaussian_noise",
    "get_registry",
    "hookimpl",
    "metropolis_accept",
    "reset_registry",
    "select_chains",
    "ula_noise_scale",
    "uniform",
]
