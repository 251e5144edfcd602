"""The quickstart's closing words when its search session accepted nothing."""

from __future__ import annotations

from homespun.cli._learning import _limited
from homespun.cli._quickstart import _why_nothing_can_pass
from homespun.learning.benchmarks.starter import SINGLE_TOOL_CATEGORIES, StarterBenchmark
from homespun.spec import Spec


def _demo_tasks(per_category: int):
    quick = [t for t in StarterBenchmark().tasks() if t.category in SINGLE_TOOL_CATEGORIES]
    return _limited(quick, per_category)


def test_a_gate_too_small_for_the_paired_rule_is_named_not_promised_a_later_success():
    said = _why_nothing_can_pass(Spec(), _demo_tasks(4))
    assert "cannot accept any edit" in said and "needs 3" in said
    assert "Later sessions" not in said


def test_the_strict_rule_or_a_big_enough_gate_keeps_the_plain_sentence():
    strict = Spec()
    strict.learning.gate.rule = "strict"
    assert _why_nothing_can_pass(strict, _demo_tasks(4)) == " Later sessions try other edits."
    loose = Spec()
    loose.learning.gate.alpha = 0.25  # 2 gate tasks are enough at this level
    assert _why_nothing_can_pass(loose, _demo_tasks(4)) == " Later sessions try other edits."
