"""The composite reward of Intelligence edits (paper Eq. 1).

``R(q, y) = alpha * acc - beta * z(E) - gamma * z(L) - delta * z(C)``

Energy ``E``, latency ``L`` and cost ``C`` are z-scored within the batch being scored
(``(x - mean) / std`` over the batch, population std; a batch where every sample has the
same value gets z = 0). The reward thus trades dimensionless deviations, not joules, seconds
and dollars. A component nobody measured (``None`` for every sample, e.g. energy on a machine
without an energy counter, or cost of a local model) adds nothing and is reported as not
measured; it is never filled in with a guess. A component measured for only some samples of
the batch (a counter that failed mid-batch) is left out the same way and reported as partial:
giving the unmeasured samples any z would be a guess.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from homespun.spec.models import RewardSpec

# component name -> (Sample attribute, RewardSpec weight name)
_COMPONENTS: dict[str, tuple[str, str]] = {
    "energy": ("energy_j", "beta"),
    "latency": ("latency_s", "gamma"),
    "cost": ("cost_usd", "delta"),
}


@dataclass(frozen=True)
class Sample:
    """One scored response: accuracy in [0, 1] and what it cost to produce it."""

    accuracy: float
    energy_j: float | None = None
    latency_s: float | None = None
    cost_usd: float | None = None


def zscores(values: Sequence[float]) -> list[float]:
    """``(x - mean) / std`` over ``values`` (population std); all zeros when std is 0."""
    n = len(values)
    if n == 0:
        return []
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    if std == 0.0 or not math.isfinite(std):
        return [0.0] * n
    return [(v - mean) / std for v in values]


def _column(samples: Sequence[Sample], attr: str) -> list[float] | None:
    """The values of one component, or None unless every sample measured it."""
    values = [getattr(s, attr) for s in samples]
    if not values or any(v is None for v in values):
        return None
    return [float(v) for v in values]


def _partial(samples: Sequence[Sample], attr: str) -> bool:
    values = [getattr(s, attr) for s in samples]
    return any(v is None for v in values) and any(v is not None for v in values)


def composite_rewards(samples: Sequence[Sample], weights: RewardSpec | None = None) -> list[float]:
    """Eq. 1 for each sample, the efficiency terms z-scored within ``samples``."""
    w = weights or RewardSpec()
    rewards = [w.alpha * float(s.accuracy) for s in samples]
    for attr, weight_name in _COMPONENTS.values():
        column = _column(samples, attr)
        if column is None:
            continue
        weight = getattr(w, weight_name)
        for i, z in enumerate(zscores(column)):
            rewards[i] -= weight * z
    return rewards


def reward_report(samples: Sequence[Sample], weights: RewardSpec | None = None) -> dict[str, Any]:
    """Which components were measured, their raw means, the weights and the rewards."""
    w = weights or RewardSpec()
    components: dict[str, Any] = {}
    for name, (attr, weight_name) in _COMPONENTS.items():
        column = _column(samples, attr)
        entry: dict[str, Any] = {
            "weight": getattr(w, weight_name),
            "measured": column is not None,
            "partial": _partial(samples, attr),
        }
        if column is not None:
            entry["mean"] = sum(column) / len(column)
        components[name] = entry
    accuracies = [float(s.accuracy) for s in samples]
    return {
        "n": len(samples),
        "accuracy": {
            "weight": w.alpha,
            "measured": True,
            "mean": sum(accuracies) / len(accuracies) if accuracies else None,
        },
        **components,
        "measured": ["accuracy"] + [n for n, c in components.items() if c["measured"]],
        "not_measured": [n for n, c in components.items() if not c["measured"]],
        "rewards": composite_rewards(samples, w),
    }
