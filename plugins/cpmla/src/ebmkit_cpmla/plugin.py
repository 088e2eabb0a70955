r"""The CPMLA plugin's hooks: the kind `mirror` (mirror maps), `flows.CPFlow` and
`samplers.MirrorLangevin`."""

from __future__ import annotations

import ebmkit
from ebmkit import Registry


@ebmkit.hookimpl
def ebmkit_add_kinds(registry: Registry) -> None:
    """Mirror maps ∇G with ∇G*, Hessian-vector products and log det ∇²G (gin ``mirrors``)."""
    registry.add_kind(
        "mirror", plural="mirrors", doc="mirror maps ∇G of a strictly convex G (CPMLA)"
    )


@ebmkit.hookimpl
def ebmkit_register(registry: Registry) -> None:
    """The mirror maps and the mirror Langevin sampler; the Convex Potential Flow."""
    from ebmkit_cpmla.cpflow import register_flows
    from ebmkit_cpmla.energies import register_energies
    from ebmkit_cpmla.mirror import register_mirrors
    from ebmkit_cpmla.mirror_langevin import register_samplers
    from ebmkit_cpmla.multiscale import register_image_flows

    register_mirrors(registry)
    register_samplers(registry)
    register_flows(registry)
    register_image_flows(registry)
    register_energies(registry)
    __import__("ebmkit_cpmla.training").training.register_trainers(registry)
    __import__("ebmkit_cpmla.metrics").metrics.register_metrics(registry)


@ebmkit.hookimpl
def ebmkit_add_eval_tasks(tasks: object) -> None:
    """`ebmkit eval inpaint` (CPMLA's inpainting through the chain's start)."""
    from ebmkit_cpmla.inpaint import add_inpaint_task

    add_inpaint_task(tasks)
