"""The three proposers of spec search: template-random, LLM (teacher), evolutionary."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage

from homespun.engines.cost import BudgetExceeded, CostMeter
from homespun.engines.testing import ScriptedChatModel, tool_call
from homespun.learning.clusters import Cluster, Diagnosis
from homespun.learning.proposers import (
    EvolutionaryProposer,
    HistoryEntry,
    LLMProposer,
    ProposerContext,
    RandomTemplateProposer,
    make_proposer,
    ops_key,
    pareto_frontier,
)
from homespun.learning.proposers.evolutionary import best_counts, dominates, select_parent
from homespun.spec import Spec
from homespun.spec.edits import (
    PatchSystemPrompt,
    Proposal,
    SetGenerationParam,
    apply_proposal,
    describe_proposal,
)

TOOLS = {
    "core": [
        "calculator",
        "think",
        "current_time",
        "remember",
        "search_memory",
        "read_file",
        "search_files",
    ]
}


def _diagnosis() -> Diagnosis:
    return Diagnosis(
        source="rules",
        clusters=[
            Cluster(
                id="memory-wrong_answer",
                name="memory answers are wrong",
                categories=["memory"],
                signature="wrong_answer",
                student_failure_rate=0.4,
                skill_gap="does not search memory before answering",
                task_ids=["m1", "m2"],
            ),
            Cluster(
                id="arithmetic-no_tool_call",
                name="arithmetic without the calculator",
                categories=["arithmetic"],
                signature="no_tool_call",
                student_failure_rate=0.7,
                skill_gap="computes in its head instead of calling the calculator",
                task_ids=["a1"],
            ),
            Cluster(
                id="files-turn_limit",
                name="file questions run out of turns",
                categories=["files"],
                signature="turn_limit",
                student_failure_rate=0.3,
                skill_gap="keeps re-reading the same file",
                task_ids=["f1"],
            ),
        ],
    )


def _ctx(**kw) -> ProposerContext:
    base = dict(
        spec=Spec(), diagnosis=_diagnosis(), history=[], max_proposals=4, seed=0, tool_names=TOOLS
    )
    base.update(kw)
    return ProposerContext(**base)


def _keys(proposals: list[Proposal]) -> list[str]:
    return [ops_key(p.ops) for p in proposals]


def _assert_admissible(ctx: ProposerContext, proposals: list[Proposal], proposer: str) -> None:
    ids = {c.id for c in ctx.diagnosis.clusters}
    tried = {ops_key(h.proposal.ops) for h in ctx.history}
    assert len(proposals) <= ctx.max_proposals
    assert len(set(_keys(proposals))) == len(proposals)  # no repeats within the batch
    for p in proposals:
        assert p.proposer == proposer and p.target_cluster in ids
        assert ops_key(p.ops) not in tried
        new = apply_proposal(ctx.spec, p)  # raises if it does not apply
        assert new.content_hash() != ctx.spec.content_hash()  # and it changes something


def test_make_proposer_names_the_setting():
    assert make_proposer("random").name == "random"
    assert make_proposer("llm").name == "llm"
    assert make_proposer("evolutionary").name == "evolutionary"
    with pytest.raises(ValueError, match=r"learning\.proposer.*'genetic'"):
        make_proposer("genetic")


# --------------------------------------------------------------------------- random


async def test_random_is_deterministic_per_seed_and_differs_across_seeds():
    a = await RandomTemplateProposer().propose(_ctx(seed=0))
    b = await RandomTemplateProposer().propose(_ctx(seed=0))
    c = await RandomTemplateProposer().propose(_ctx(seed=1))
    assert len(a) == 4 and _keys(a) == _keys(b)
    assert _keys(a) != _keys(c)
    # Highest failure rate first, then round-robin over the clusters.
    assert [p.target_cluster for p in a] == [
        "arithmetic-no_tool_call",
        "memory-wrong_answer",
        "files-turn_limit",
        "arithmetic-no_tool_call",
    ]


async def test_random_proposals_apply_and_cover_every_primitive():
    primitives: set[str] = set()
    ops: set[str] = set()
    for seed in range(10):
        ctx = _ctx(seed=seed, max_proposals=6)
        proposals = await RandomTemplateProposer().propose(ctx)
        assert len(proposals) == 6
        _assert_admissible(ctx, proposals, "random")
        for p in proposals:
            assert 1 <= len(p.ops) <= 2
            primitives.update(p.primitives())
            ops.update(o.op for o in p.ops)
    assert primitives == {"intelligence", "engine", "agent", "tools", "memory"}
    assert {
        "set_generation_param",
        "set_engine_param",
        "patch_system_prompt",
        "set_agent_param",
        "set_tool_description",
        "set_memory_param",
    } <= ops


async def test_random_draws_rendering_choices_and_texts_that_apply():
    import random

    from homespun.learning.proposers.random_templates import TemplateInput, draw_op

    ops: set[str] = set()
    for seed in range(30):
        ctx = _ctx(seed=seed, max_proposals=6)
        proposals = await RandomTemplateProposer().propose(ctx)
        _assert_admissible(ctx, proposals, "random")  # applies and changes the spec
        ops.update(o.op for p in proposals for o in p.ops)
    assert {"set_rendering_param", "set_rendering_text"} <= ops

    cluster = _diagnosis().clusters[1]
    for fmt in ("constrained_json", "native"):
        spec = Spec()
        spec.engine.tool_call_format = fmt
        drawn: dict[str, set[str]] = {"set_rendering_param": set(), "set_rendering_text": set()}
        for i in range(600):
            t = TemplateInput(spec, cluster, "arithmetic", ["arithmetic"], TOOLS, random.Random(i))
            op = draw_op(t, "agent")
            if op is None or op.op not in drawn:
                continue
            drawn[op.op].add(op.param)
            new = apply_proposal(spec, Proposal(target_cluster=cluster.id, ops=[op]))
            assert new.agent.rendering != spec.agent.rendering
            if op.op == "set_rendering_param" and op.param == "result_framing":
                # "auto" already is the format's own framing: draw the other one
                assert op.value == ("user_message" if fmt == "native" else "tool_message")
        choices = {"result_framing", "few_shot_style"}  # what the native rendering reads
        if fmt == "constrained_json":
            choices |= {"catalog_arguments", "reply_protocol", "parallel_calls", "calls_as_list"}
        assert drawn["set_rendering_param"] == choices
        texts = {"result_template", "error_template", "continuation"}
        if fmt == "constrained_json":  # what to do when no tool fits: the catalog's text
            texts.add("no_tool_rule")
        assert drawn["set_rendering_text"] == texts


async def test_random_prompt_hints_are_keyed_by_the_cluster():
    hints = []
    for seed in range(20):
        for p in await RandomTemplateProposer().propose(_ctx(seed=seed, max_proposals=3)):
            hints += [(p.target_cluster, o.text) for o in p.ops if o.op == "patch_system_prompt"]
    assert hints
    for cluster, text in hints:
        assert cluster.split("-")[0] in text  # e.g. "For arithmetic questions, ..."


async def test_random_never_repeats_the_history():
    first = await RandomTemplateProposer().propose(_ctx(seed=0))
    history = [
        HistoryEntry(proposal=p, decision="rejected", reason="no gain", deltas={}) for p in first
    ]
    proposer = RandomTemplateProposer()
    ctx = _ctx(seed=0, history=history)
    again = await proposer.propose(ctx)
    assert len(again) == 4
    assert not set(_keys(again)) & set(_keys(first))
    _assert_admissible(ctx, again, "random")
    assert any("repeats a proposal" in d for d in proposer.last_report.dropped)


# --------------------------------------------------------------------------- llm


def _history() -> list[HistoryEntry]:
    tried = Proposal(
        target_cluster="arithmetic-no_tool_call",
        proposer="llm",
        ops=[SetGenerationParam(param="top_k", value=1)],
    )
    return [
        HistoryEntry(
            proposal=tried,
            decision="rejected",
            reason="files-turn_limit regressed by 0.10",
            deltas={"arithmetic-no_tool_call": 0.0, "files-turn_limit": -0.10},
        )
    ]


def _teacher_reply() -> AIMessage:
    return tool_call(
        "submit_proposals",
        {
            "proposals": [
                {
                    "target_cluster": "arithmetic-no_tool_call",
                    "rationale": "use the calculator",
                    "ops": [
                        {
                            "op": "set_agent_param",
                            "param": "tool_policy",
                            "value": "required_first",
                        },
                        {"op": "set_generation_param", "param": "warmth", "value": 1},  # invalid
                        {
                            "op": "set_tool_description",
                            "server": "core",
                            "tool": "calculator",
                            "description": "Call this for every arithmetic question.",
                        },
                    ],
                },
                {
                    "target_cluster": "memory-wrong_answer",
                    "rationale": "search first",
                    "ops": [
                        {
                            "op": "patch_system_prompt",
                            "mode": "append",
                            "text": "Search memory before answering a question about the user.",
                        }
                    ],
                },
                {
                    "target_cluster": "no-such-cluster",
                    "rationale": "?",
                    "ops": [{"op": "set_memory_param", "param": "top_k", "value": 3}],
                },
                {
                    "target_cluster": "arithmetic-no_tool_call",
                    "rationale": "again",  # history repeat
                    "ops": [{"op": "set_generation_param", "param": "top_k", "value": 1}],
                },
            ]
        },
    )


class RecordingMeter:
    """The CostMeter interface, logging when it is asked relative to the teacher's calls."""

    def __init__(self, teacher: ScriptedChatModel, refuse: bool = False):
        self.teacher, self.refuse, self.log = teacher, refuse, []

    def check(self, estimated_input_tokens: int = 0, max_output_tokens: int = 0) -> None:
        self.log.append(("check", len(self.teacher.calls), estimated_input_tokens))
        if self.refuse:
            raise BudgetExceeded("session", 1.0, 1.0, 0.1, "max_cost_per_session_usd")

    def record(self, reply) -> float:
        self.log.append(("record", len(self.teacher.calls), reply.usage_metadata))
        return 0.0


async def test_llm_parses_proposals_and_drops_invalid_ones():
    teacher = ScriptedChatModel(script=[_teacher_reply()])
    proposer = LLMProposer()
    ctx = _ctx(teacher=teacher, history=_history())
    proposals = await proposer.propose(ctx)

    _assert_admissible(ctx, proposals, "llm")
    assert [p.target_cluster for p in proposals] == [
        "arithmetic-no_tool_call",
        "memory-wrong_answer",
    ]
    assert [o.op for o in proposals[0].ops] == ["set_agent_param", "set_tool_description"]
    assert proposals[0].rationale == "use the calculator"
    new = apply_proposal(ctx.spec, proposals[0])
    assert new.agent.tool_policy == "required_first"
    assert new.tools.server("core").descriptions["calculator"].startswith("Call this")
    dropped = "\n".join(proposer.last_report.dropped)
    assert "warmth" in dropped  # the bad op, named
    assert "no-such-cluster" in dropped
    assert "repeats a proposal" in dropped
    assert proposer.last_report.teacher_calls == 1 and len(teacher.calls) == 1


async def test_llm_prompt_carries_spec_clusters_catalog_tools_and_history():
    teacher = ScriptedChatModel(script=[_teacher_reply()])
    ctx = _ctx(teacher=teacher, history=_history())
    await LLMProposer().propose(ctx)
    call = teacher.calls[0]
    assert call["tools"] == ["submit_proposals"] and call["tool_choice"] == "submit_proposals"
    prompt = "\n".join(str(m.content) for m in call["messages"])
    history = _history()[0]
    assert describe_proposal(history.proposal) in prompt
    assert "[rejected]" in prompt and "files-turn_limit regressed by 0.10" in prompt
    assert "files-turn_limit -0.10" in prompt  # the per-cluster deltas
    assert "computes in its head" in prompt and "70%" in prompt  # cluster skill gap, rate
    assert "temperature = 0.0" in prompt and "[tools.core]" in prompt
    assert "core: calculator, think" in prompt
    assert '"set_tool_description"' in prompt
    # train_lora is offered exactly when training can run here (train extra, embedded engine)
    from homespun.learning.training.edit import training_available

    assert ("train_lora" in prompt) == training_available(ctx.spec)


async def test_llm_meter_is_checked_before_and_charged_after():
    teacher = ScriptedChatModel(script=[_teacher_reply()])
    meter = RecordingMeter(teacher)
    await LLMProposer().propose(_ctx(teacher=teacher, meter=meter))
    assert [(e[0], e[1]) for e in meter.log] == [("check", 0), ("record", 1)]
    assert meter.log[0][2] > 500  # a real size estimate for the prompt
    assert meter.log[1][2]["input_tokens"] == 10  # the reply, usage included

    real = CostMeter(session_cap_usd=1.0, total_cap_usd=10.0, model="claude-opus-4-6")
    teacher = ScriptedChatModel(script=[_teacher_reply()])
    await LLMProposer().propose(_ctx(teacher=teacher, meter=real))
    assert real.calls == 1 and real.spent_usd > 0


async def test_llm_refused_by_the_meter_makes_no_call():
    teacher = ScriptedChatModel(script=[_teacher_reply()])
    with pytest.raises(BudgetExceeded):
        await LLMProposer().propose(_ctx(teacher=teacher, meter=RecordingMeter(teacher, True)))
    assert teacher.calls == []

    spent = CostMeter(session_cap_usd=0.0, total_cap_usd=0.0, model="claude-opus-4-6")
    with pytest.raises(BudgetExceeded, match="max_cost_per_session_usd"):
        await LLMProposer().propose(_ctx(teacher=teacher, meter=spent))
    assert teacher.calls == [] and spent.calls == 0


async def test_llm_without_a_tool_call_asks_once_more_then_returns_nothing_but_is_charged():
    teacher = ScriptedChatModel(script=["I think you should lower the temperature."] * 3)
    meter = RecordingMeter(teacher)
    proposer = LLMProposer()
    assert await proposer.propose(_ctx(teacher=teacher, meter=meter)) == []
    assert [e[0] for e in meter.log] == ["check", "record"] * 2  # one retry, both charged
    retry = "\n".join(str(m.content) for m in teacher.calls[1]["messages"])
    assert "did not call submit_proposals" in retry  # the retry says what was wrong
    notes = proposer.last_report.notes
    assert "did not call submit_proposals" in notes[0]
    assert notes[-1] == "no valid proposal in 2 teacher replies"


async def test_llm_asks_again_once_when_every_op_is_invalid_and_keeps_the_valid_retry():
    bad = tool_call(
        "submit_proposals",
        {
            "proposals": [
                {
                    "target_cluster": "arithmetic-no_tool_call",
                    "rationale": "warmer",
                    "ops": [{"op": "set_generation_param", "param": "warmth", "value": 2}],
                }
            ]
        },
    )
    teacher = ScriptedChatModel(script=[bad, _teacher_reply()])
    proposer = LLMProposer()
    proposals = await proposer.propose(_ctx(teacher=teacher, history=_history()))
    assert len(teacher.calls) == 2 and proposer.last_report.teacher_calls == 2
    assert "warmth" in "\n".join(str(m.content) for m in teacher.calls[1]["messages"])
    assert [p.target_cluster for p in proposals] == [
        "arithmetic-no_tool_call",
        "memory-wrong_answer",
    ]


async def test_llm_needs_a_teacher():
    with pytest.raises(ValueError, match="learning.teacher"):
        await LLMProposer().propose(_ctx())


async def test_llm_caps_the_number_of_proposals():
    teacher = ScriptedChatModel(script=[_teacher_reply()])
    proposals = await LLMProposer().propose(_ctx(teacher=teacher, max_proposals=1))
    assert len(proposals) == 1 and len(teacher.calls) == 1


# --------------------------------------------------------------------------- Pareto


def test_dominance_and_frontier():
    assert dominates({"a": 1, "b": 1}, {"a": 1, "b": 0})
    assert not dominates({"a": 1, "b": 0}, {"a": 1, "b": 0})  # equal: no one dominates
    assert not dominates({"a": 1, "b": 0}, {"a": 0, "b": 1})
    assert dominates({"a": 0.5}, {})  # a missing score counts as 0
    scores = [
        {"a": 1, "b": 0},
        {"a": 0, "b": 1},
        {"a": 0.5, "b": 0.5},
        {"a": 0.4, "b": 0.4},
        {"a": 1, "b": 0},
    ]
    assert pareto_frontier(scores) == [0, 1, 2, 4]
    assert pareto_frontier([{"a": 0.2}, {"a": 0.3}]) == [1]
    assert best_counts(scores, [0, 1, 2]) == {0: 1, 1: 1, 2: 0}


def test_parent_selection_weights_by_clusters_won():
    import random

    scores = [{"a": 1, "b": 1, "c": 0}, {"a": 0, "b": 0, "c": 1}, {"a": 0.5, "b": 0.5, "c": 0.5}]
    rng = random.Random("t")
    picks = [select_parent(scores, [0, 1, 2], rng) for _ in range(600)]
    assert picks.count(2) == 0  # best on no cluster
    assert 300 < picks.count(0) < 500  # best on two clusters of three


# --------------------------------------------------------------------------- evolutionary

HINT = "For memory questions, search memory first and answer with exactly what it returns."


def _fake_evaluate(log: list[Spec]):
    """Arithmetic improves at temperature 0, memory with the hint; files never moves."""

    async def evaluate(spec: Spec) -> dict[str, float]:
        log.append(spec)
        return {
            "arithmetic-no_tool_call": 0.2 + (0.4 if spec.intelligence.temperature == 0 else 0),
            "memory-wrong_answer": 0.3
            + (0.4 if "memory questions" in spec.agent.system_prompt else 0),
            "files-turn_limit": 0.5,
        }

    return evaluate


def _mutating_teacher() -> ScriptedChatModel:
    def reply(messages):
        task = str(messages[-1].content).rsplit("## Task", 1)[1]
        if "intelligence edit" in task:
            ops = [{"op": "set_generation_param", "param": "temperature", "value": 0}]
        elif "agent edit" in task:
            ops = [{"op": "patch_system_prompt", "mode": "append", "text": HINT}]
        elif "engine edit" in task:
            ops = [{"op": "set_engine_param", "param": "context_length", "value": 8192}]
        else:
            ops = [{"op": "set_memory_param", "param": "top_k", "value": 3}]
        return tool_call("submit_edit", {"rationale": "r", "ops": ops})

    return ScriptedChatModel(script=[reply] * 200)


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_evolutionary_finds_an_improving_compound_edit_within_budget(seed):
    root = Spec(intelligence={"temperature": 0.7})
    evaluated: list[Spec] = []
    teacher = _mutating_teacher()
    meter = CostMeter(session_cap_usd=5.0, total_cap_usd=50.0, model="claude-opus-4-6")
    proposer = EvolutionaryProposer()
    ctx = _ctx(
        spec=root,
        seed=seed,
        max_proposals=6,
        teacher=teacher,
        meter=meter,
        evaluate=_fake_evaluate(evaluated),
    )
    proposals = await proposer.propose(ctx)

    assert len(evaluated) == ctx.max_proposals + 1  # the root, then the matched budget
    assert evaluated[0] is root
    assert proposer.last_report.evaluations == 7
    _assert_admissible(ctx, proposals, "evolutionary")
    best = proposals[0]
    new = apply_proposal(root, best)
    assert new.intelligence.temperature == 0 and HINT in new.agent.system_prompt
    assert best.primitives() == ["agent", "intelligence"]  # a compound edit
    # Children no better than their parent are not kept, so neutral ops never ride along.
    for p in proposals:
        assert {o.op for o in p.ops} <= {"set_generation_param", "patch_system_prompt"}
    assert best.target_cluster == "arithmetic-no_tool_call"  # ties go to the higher failure rate
    assert meter.calls == proposer.last_report.teacher_calls == len(teacher.calls) > 0
    for p in proposals:  # every returned member gained on its target cluster
        assert "+0.40" in p.rationale


async def test_evolutionary_without_teacher_uses_templates_and_spends_the_budget():
    evaluated: list[Spec] = []
    ctx = _ctx(
        spec=Spec(intelligence={"temperature": 0.7}),
        max_proposals=5,
        evaluate=_fake_evaluate(evaluated),
    )
    proposer = EvolutionaryProposer()
    proposals = await proposer.propose(ctx)
    assert len(evaluated) == 6
    assert len({s.content_hash() for s in evaluated}) == 6  # never the same spec twice
    _assert_admissible(ctx, proposals, "evolutionary")
    # Deterministic: same seed, same search.
    again = await EvolutionaryProposer().propose(
        _ctx(
            spec=Spec(intelligence={"temperature": 0.7}),
            max_proposals=5,
            evaluate=_fake_evaluate([]),
        )
    )
    assert _keys(again) == _keys(proposals)


async def test_evolutionary_falls_back_to_templates_when_the_meter_refuses():
    evaluated: list[Spec] = []
    teacher = _mutating_teacher()
    spent = CostMeter(session_cap_usd=0.0, total_cap_usd=0.0, model="claude-opus-4-6")
    proposer = EvolutionaryProposer()
    await proposer.propose(
        _ctx(
            spec=Spec(intelligence={"temperature": 0.7}),
            max_proposals=3,
            teacher=teacher,
            meter=spent,
            evaluate=_fake_evaluate(evaluated),
        )
    )
    assert teacher.calls == [] and spent.calls == 0
    assert len(evaluated) == 4
    assert any("budget exceeded" in n for n in proposer.last_report.notes)


async def test_evolutionary_needs_an_evaluator():
    with pytest.raises(ValueError, match="ctx.evaluate"):
        await EvolutionaryProposer().propose(_ctx())


async def test_evolutionary_does_not_return_history():
    evaluated: list[Spec] = []
    root = Spec(intelligence={"temperature": 0.7})
    first = await EvolutionaryProposer().propose(
        _ctx(
            spec=root,
            max_proposals=6,
            teacher=_mutating_teacher(),
            evaluate=_fake_evaluate(evaluated),
        )
    )
    history = [HistoryEntry(proposal=p, decision="rejected", reason="", deltas={}) for p in first]
    ctx = _ctx(
        spec=root,
        max_proposals=6,
        teacher=_mutating_teacher(),
        history=history,
        evaluate=_fake_evaluate([]),
    )
    again = await EvolutionaryProposer().propose(ctx)
    _assert_admissible(ctx, again, "evolutionary")


def test_merge_takes_each_clusters_ops_from_the_parent_that_wins_it():
    import random

    from homespun.learning.proposers.base import ProposerReport
    from homespun.learning.proposers.evolutionary import Candidate

    root = Spec(intelligence={"temperature": 0.7})
    temp = SetGenerationParam(param="temperature", value=0)
    hint = PatchSystemPrompt(mode="append", text=HINT)
    top_k = SetGenerationParam(param="top_k", value=10)
    a_path = ((temp, "arithmetic-no_tool_call"), (top_k, "memory-wrong_answer"))
    population = [
        Candidate(
            spec=root, path=(), scores={"arithmetic-no_tool_call": 0.2, "memory-wrong_answer": 0.3}
        ),
        Candidate(
            spec=apply_proposal(root, Proposal(target_cluster="x", ops=[temp, top_k])),
            path=a_path,
            scores={"arithmetic-no_tool_call": 0.6, "memory-wrong_answer": 0.4},
            origin="mutation",
        ),
        Candidate(
            spec=apply_proposal(root, Proposal(target_cluster="x", ops=[hint])),
            path=((hint, "memory-wrong_answer"),),
            scores={"arithmetic-no_tool_call": 0.2, "memory-wrong_answer": 0.7},
            origin="mutation",
        ),
    ]
    ctx = _ctx(spec=root)
    child = EvolutionaryProposer()._merge(
        ctx, population, [1, 2], random.Random(0), ProposerReport(proposer="evolutionary")
    )
    assert child is not None and child.origin == "merge"
    # arithmetic from the first parent (0.6 > 0.2), memory from the second (0.7 > 0.4):
    # the first parent's memory op (top_k) is left behind.
    assert ops_key(child.ops) == ops_key([temp, hint])
    assert child.spec.intelligence.temperature == 0 and HINT in child.spec.agent.system_prompt
    assert {child.parent, child.other_parent} == {1, 2}
