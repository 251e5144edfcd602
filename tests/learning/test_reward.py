"""The composite reward (paper Eq. 1): efficiency terms z-scored within the batch."""

from __future__ import annotations

import math

import pytest

from homespun.learning.reward import Sample, composite_rewards, reward_report, zscores
from homespun.spec.models import LearningSpec, RewardSpec


def test_default_weights_are_the_papers() -> None:
    w = LearningSpec().reward
    assert (w.alpha, w.beta, w.gamma, w.delta) == (0.5, 0.1, 0.1, 0.3)


def test_efficiency_terms_are_z_scored_within_the_batch() -> None:
    # latency 1, 2, 3 s: mean 2, population std sqrt(2/3) -> z = -1.2247, 0, +1.2247
    # energy 10, 10, 40 J: mean 20, std sqrt(200) = 14.142 -> z = -0.7071, -0.7071, +1.4142
    # cost 0.02 for all: std 0 -> z = 0
    samples = [
        Sample(accuracy=1.0, energy_j=10.0, latency_s=1.0, cost_usd=0.02),
        Sample(accuracy=0.0, energy_j=10.0, latency_s=2.0, cost_usd=0.02),
        Sample(accuracy=1.0, energy_j=40.0, latency_s=3.0, cost_usd=0.02),
    ]
    z_l = 1.0 / math.sqrt(2.0 / 3.0)
    z_e = 10.0 / math.sqrt(200.0)
    expected = [
        0.5 * 1.0 - 0.1 * (-z_e) - 0.1 * (-z_l) - 0.3 * 0.0,
        0.5 * 0.0 - 0.1 * (-z_e) - 0.1 * 0.0,
        0.5 * 1.0 - 0.1 * (2 * z_e) - 0.1 * z_l,
    ]
    assert composite_rewards(samples, RewardSpec()) == pytest.approx(expected)
    assert expected == pytest.approx([0.693185, 0.070711, 0.236105], abs=1e-6)


def test_z_scores_depend_on_the_batch_not_on_units() -> None:
    # the same relative spread in ms or in s gives the same rewards
    in_s = [Sample(accuracy=0.5, latency_s=x) for x in (0.1, 0.2, 0.6)]
    in_ms = [Sample(accuracy=0.5, latency_s=x * 1000) for x in (0.1, 0.2, 0.6)]
    assert composite_rewards(in_s) == pytest.approx(composite_rewards(in_ms))
    assert zscores([5.0, 5.0, 5.0]) == [0.0, 0.0, 0.0]
    assert zscores([]) == []


def test_unmeasured_components_add_nothing_and_are_reported() -> None:
    # no energy counter, local model (no cost): only accuracy and latency count
    samples = [
        Sample(accuracy=1.0, energy_j=None, latency_s=1.0, cost_usd=None),
        Sample(accuracy=0.0, energy_j=None, latency_s=3.0, cost_usd=None),
    ]
    assert composite_rewards(samples) == pytest.approx([0.5 + 0.1, 0.0 - 0.1])
    report = reward_report(samples)
    assert report["measured"] == ["accuracy", "latency"]
    assert report["not_measured"] == ["energy", "cost"]
    assert report["energy"] == {"weight": 0.1, "measured": False, "partial": False}
    assert report["latency"]["mean"] == pytest.approx(2.0)
    assert report["rewards"] == pytest.approx([0.6, -0.1])


def test_a_partly_measured_component_is_left_out_not_imputed() -> None:
    samples = [Sample(accuracy=1.0, energy_j=5.0), Sample(accuracy=1.0, energy_j=None)]
    assert composite_rewards(samples) == [0.5, 0.5]
    report = reward_report(samples)
    assert report["energy"]["measured"] is False and report["energy"]["partial"] is True
    assert "energy" in report["not_measured"]


def test_weights_come_from_the_reward_spec() -> None:
    samples = [Sample(accuracy=1.0, cost_usd=0.0), Sample(accuracy=0.0, cost_usd=0.01)]
    accuracy_only = RewardSpec(alpha=1.0, beta=0.0, gamma=0.0, delta=0.0)
    assert composite_rewards(samples, accuracy_only) == [1.0, 0.0]
    cost_heavy = RewardSpec(alpha=0.0, beta=0.0, gamma=0.0, delta=2.0)
    # cost z = -1, +1: the cheap answer is rewarded, the dear one penalised
    assert composite_rewards(samples, cost_heavy) == pytest.approx([2.0, -2.0])
    assert reward_report(samples, cost_heavy)["cost"]["weight"] == 2.0
