r"""Learnables: components with parameters besides the energy, found once and always saved."""

from ebmkit.learnables.discovery import component_roots, find_learnables
from ebmkit.learnables.module import LearnableModule

__all__ = ["LearnableModule", "component_roots", "find_learnables"]
