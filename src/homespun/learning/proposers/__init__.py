"""Proposers of spec search: template-random, LLM (teacher) and evolutionary (GEPA-style).

All three take a `ProposerContext` and return proposals that apply cleanly to the current
spec; `make_proposer(spec.learning.proposer)` picks one.
"""

from .base import (
    PROPOSER_NAMES,
    HistoryEntry,
    Proposer,
    ProposerContext,
    ProposerReport,
    make_proposer,
    ops_key,
)
from .evolutionary import EvolutionaryProposer, pareto_frontier
from .llm import LLMProposer
from .random_templates import RandomTemplateProposer

__all__ = [
    "PROPOSER_NAMES",
    "EvolutionaryProposer",
    "HistoryEntry",
    "LLMProposer",
    "Proposer",
    "ProposerContext",
    "ProposerReport",
    "RandomTemplateProposer",
    "make_proposer",
    "ops_key",
    "pareto_frontier",
]
