"""The template-random proposer: the paper's baseline over the shared four-primitive catalog.

No teacher. For each cluster (highest failure rate first) it draws one or two templated ops
from a catalog that spans Intelligence, Engine, Agents and Tools & Memory, filling template
parameters from fixed value sets and from the cluster's category and failure signature. Draws
are seeded with strings like ``"{seed}:{cluster}:{i}"`` so the same seed gives the same
proposals in every process (never Python's per-process ``hash()``).

The templates are also the mutation operator of the evolutionary proposer when it has no
teacher, which is why they are grouped by primitive.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from homespun.learning.clusters import Cluster
from homespun.spec import Spec
from homespun.spec.edits import (
    RENDERING_CHOICES,
    AddVerifier,
    EditFewShot,
    EditOp,
    PatchSystemPrompt,
    Proposal,
    RemoveTool,
    SetAgentLoop,
    SetAgentParam,
    SetEngineParam,
    SetGenerationParam,
    SetMemoryParam,
    SetRenderingParam,
    SetRenderingText,
    SetToolDescription,
)
from homespun.spec.models import FewShotExample, VerifierSpec

from .base import (
    ProposalFilter,
    ProposerContext,
    ProposerReport,
    clusters_by_failure,
)

# The paper's four editable primitives; Tools & Memory is one of them.
PRIMITIVE_GROUPS = ("intelligence", "engine", "agent", "tools_memory")


@dataclass
class TemplateInput:
    spec: Spec
    cluster: Cluster
    category: str
    all_categories: list[str]  # of every cluster in the diagnosis
    tool_names: dict[str, list[str]]
    rng: random.Random


Template = Callable[[TemplateInput], EditOp | None]

# --------------------------------------------------------------------------- tool relevance

_CATEGORY_KEYWORDS: dict[str, tuple[str, ...]] = {
    "arithmetic": ("calc", "math", "compute"),
    "math": ("calc", "math", "compute"),
    "memory": ("remember", "memory", "recall"),
    "files": ("file", "read"),
    "file": ("file", "read"),
    "time": ("time", "date", "clock"),
    "date": ("time", "date", "clock"),
}


def _keywords(category: str) -> tuple[str, ...]:
    tokens = tuple(t for t in re.split(r"[^a-z0-9]+", category.lower()) if len(t) >= 3)
    return _CATEGORY_KEYWORDS.get(category.lower(), ()) + tokens


def is_relevant(tool: str, category: str) -> bool:
    name = tool.lower()
    return any(k in name for k in _keywords(category))


def offered_tools(spec: Spec, tool_names: dict[str, list[str]]) -> list[tuple[str, str]]:
    """(server, tool) pairs the model is offered now, in a stable order."""
    out = []
    for server in sorted(tool_names):
        try:
            s = spec.tools.server(server)
        except KeyError:
            continue
        out.extend((server, t) for t in sorted(tool_names[server]) if s.allows(t))
    return out


# --------------------------------------------------------------------------- text templates

_HINTS: dict[str, tuple[str, ...]] = {
    "no_tool_call": (
        "For {category} questions, call the right tool first and then answer with exactly "
        "its result.",
        "Never answer a {category} question from memory: use {tool} and report what it returns.",
    ),
    "unknown_tool": (
        "Only call tools from the list you are given, spelled exactly; for {category} "
        "questions that is {tool}.",
    ),
    "bad_arguments": (
        "When you call a tool for a {category} question, pass exactly the arguments its "
        "description asks for, as plain values.",
    ),
    "tool_error": (
        "If a tool returns an error for a {category} question, fix the arguments and call "
        "it once more before answering.",
    ),
    "wrong_answer": (
        "For {category} questions, answer with exactly the tool's result, with no extra words.",
        "For {category} questions, check the tool result before answering and copy it exactly.",
    ),
    "turn_limit": ("For {category} questions, call one tool, then give the final answer at once.",),
    "engine_error": ("Keep answers to {category} questions short.",),
}
_GENERIC_HINTS = (
    "For {category} questions, call the right tool first and then answer with exactly its result.",
    "Think about which tool fits a {category} question before you answer.",
)

# Worked tool round trips per skill (user, tool, arguments, tool result, answer). None of
# them is a benchmark task: an example must teach the pattern, never leak an answer.
_FEW_SHOT: dict[str, tuple[str, str, dict, str, str]] = {
    "arithmetic": (
        "What is 25 * 4? Use the calculator.",
        "calculator",
        {"expression": "25 * 4"},
        "100",
        "25 * 4 = 100",
    ),
    "memory_recall": (
        "Who is my doctor? Search memory.",
        "search_memory",
        {"query": "doctor"},
        "[2] My doctor is Dr. Silva.",
        "Your doctor is Dr. Silva.",
    ),
    "memory_store": (
        "Remember that my car is blue.",
        "remember",
        {"text": "My car is blue."},
        "Remembered (id 4)",
        "Saved: your car is blue.",
    ),
    "files": (
        "Read notes/plan.txt. When is the meeting?",
        "read_file",
        {"path": "notes/plan.txt"},
        "Team meeting on Tuesday at 10:00.",
        "The meeting is on Tuesday at 10:00.",
    ),
    "time": (
        "What is today's date? Use current_time.",
        "current_time",
        {"timezone": "UTC"},
        "2025-03-04T09:15:00+00:00",
        "Today is 2025-03-04.",
    ),
}
_FEW_SHOT["math"] = _FEW_SHOT["arithmetic"]
_FEW_SHOT["memory"] = _FEW_SHOT["memory_recall"]


def _tool_for(t: TemplateInput) -> str:
    relevant = [
        tool for _, tool in offered_tools(t.spec, t.tool_names) if is_relevant(tool, t.category)
    ]
    return t.rng.choice(relevant) if relevant else "the matching tool"


# --------------------------------------------------------------------------- the catalog


def _choice_other(rng: random.Random, values: list, current) -> object | None:
    options = [v for v in values if v != current]
    return rng.choice(options) if options else None


def _temperature(t: TemplateInput) -> EditOp | None:
    v = _choice_other(t.rng, [0.0, 0.2, 0.7], t.spec.intelligence.temperature)
    return SetGenerationParam(param="temperature", value=v)


def _top_k(t: TemplateInput) -> EditOp | None:
    v = _choice_other(t.rng, [1, 10, 40], t.spec.intelligence.top_k)
    return SetGenerationParam(param="top_k", value=v)


def _max_tokens(t: TemplateInput) -> EditOp | None:
    v = _choice_other(t.rng, [128, 256, 512], t.spec.intelligence.max_tokens)
    return SetGenerationParam(param="max_tokens", value=v)


def _repeat_penalty(t: TemplateInput) -> EditOp | None:
    v = _choice_other(t.rng, [1.0, 1.1, 1.3], t.spec.intelligence.repeat_penalty)
    return SetGenerationParam(param="repeat_penalty", value=v)


def _tool_call_format(t: TemplateInput) -> EditOp | None:
    if t.spec.engine.backend == "anthropic":  # native only
        return None
    flipped = (
        "native" if t.spec.engine.tool_call_format == "constrained_json" else "constrained_json"
    )
    return SetEngineParam(param="tool_call_format", value=flipped)


def _context_length(t: TemplateInput) -> EditOp | None:
    v = _choice_other(t.rng, [2048, 4096, 8192], t.spec.engine.context_length)
    return SetEngineParam(param="context_length", value=v)


def _prompt_hint(t: TemplateInput) -> EditOp | None:
    hints = _HINTS.get(t.cluster.signature, ()) + _GENERIC_HINTS
    text = t.rng.choice(hints).format(category=t.category, tool=_tool_for(t))
    if text in t.spec.agent.system_prompt:
        return None
    return PatchSystemPrompt(mode="append", text=text)


def _tool_policy(t: TemplateInput) -> EditOp | None:
    v = _choice_other(t.rng, ["required_first", "auto"], t.spec.agent.tool_policy)
    return SetAgentParam(param="tool_policy", value=v)


def _max_turns(t: TemplateInput) -> EditOp | None:
    v = _choice_other(t.rng, [3, 4, 6, 8], t.spec.agent.max_turns)
    return SetAgentParam(param="max_turns", value=v)


def _repeat_guard(t: TemplateInput) -> EditOp | None:
    return SetAgentParam(param="repeat_guard", value=not t.spec.agent.repeat_guard)


def _loop(t: TemplateInput) -> EditOp | None:
    v = _choice_other(t.rng, ["simple", "react", "plan_execute"], t.spec.agent.loop)
    return SetAgentLoop(loop=v)


def _few_shot(t: TemplateInput) -> EditOp | None:
    worked = _FEW_SHOT.get(t.category.lower())
    offered = {tool for _, tool in offered_tools(t.spec, t.tool_names)}
    if worked and (worked[1] in offered or not t.tool_names):
        user, tool, arguments, result, answer = worked
        example = FewShotExample(
            user=user, tool=tool, arguments=arguments, tool_result=result, assistant=answer
        )
    else:
        example = FewShotExample(
            user=f"A {t.category} question: what is the answer?",
            assistant=f"I called {_tool_for(t)} first; its result is the answer, so I report "
            "it exactly.",
        )
    if example in t.spec.agent.few_shot:
        return None
    return EditFewShot(action="add", example=example)


# Rendering texts a template may draw: result framings that never read like an answer, and
# instructions after tool results.
_RESULT_TEMPLATES = (
    (
        '<tool_result name="{name}">\n{result}\n</tool_result>',
        '<tool_error name="{name}">\n{result}\n</tool_error>',
    ),
    ("Result of {name}:\n{result}", "Error from {name}:\n{result}"),
)
_CONTINUATIONS = (
    "Call another tool or give the final answer.",
    "Now answer the user's question using only the results above.",
    "",
)


_NO_TOOL_RULES = (
    "If no tool can do what is asked, call none: answer and say so.",
    "Call a tool only when one of them fits the request; otherwise answer directly.",
    "",
)


# Rendering choices that only the constrained_json prompt and schema read.
_CONSTRAINED_ONLY = ("catalog_arguments", "reply_protocol", "parallel_calls", "calls_as_list")


def _rendering_choice(t: TemplateInput) -> EditOp | None:
    """Another value of one `[agent.rendering]` choice that changes what this spec's model
    is shown."""
    rendering = t.spec.agent.rendering
    native = t.spec.engine.tool_call_format == "native"
    params = [p for p in sorted(RENDERING_CHOICES) if not (native and p in _CONSTRAINED_ONLY)]
    param = t.rng.choice(params)
    if param in ("parallel_calls", "calls_as_list"):
        return SetRenderingParam(param=param, value=not getattr(rendering, param))
    if param == "result_framing":  # "auto" is one of the other two, per format
        current = rendering.result_framing
        if current == "auto":
            current = "tool_message" if native else "user_message"
        value = "user_message" if current == "tool_message" else "tool_message"
        return SetRenderingParam(param=param, value=value)
    value = _choice_other(t.rng, list(RENDERING_CHOICES[param]), getattr(rendering, param))
    return SetRenderingParam(param=param, value=value)  # type: ignore[arg-type]


def _rendering_text(t: TemplateInput) -> EditOp | None:
    """Another result framing, continuation instruction or rule for requests no tool fits."""
    rendering = t.spec.agent.rendering
    roll = t.rng.random()
    if roll < 0.25 and t.spec.engine.tool_call_format == "constrained_json":
        text = _choice_other(t.rng, list(_NO_TOOL_RULES), rendering.no_tool_rule)
        return SetRenderingText(param="no_tool_rule", text=text)  # type: ignore[arg-type]
    if roll < 0.625:
        result, error = t.rng.choice(_RESULT_TEMPLATES)
        param = t.rng.choice(("result_template", "error_template"))
        text = result if param == "result_template" else error
        if getattr(rendering, param) == text:
            return None
        return SetRenderingText(param=param, text=text)
    text = _choice_other(t.rng, list(_CONTINUATIONS), rendering.continuation)
    return SetRenderingText(param="continuation", text=text)  # type: ignore[arg-type]


def _verifier(t: TemplateInput) -> EditOp | None:
    if any(v.kind == "non_empty" for v in t.spec.agent.verifiers):
        return None
    return AddVerifier(
        verifier=VerifierSpec(
            kind="non_empty", feedback="Give a final answer in one short sentence."
        )
    )


def _tool_description(t: TemplateInput) -> EditOp | None:
    relevant = [
        (s, tool)
        for s, tool in offered_tools(t.spec, t.tool_names)
        if is_relevant(tool, t.category)
    ]
    if not relevant:
        return None
    server, tool = t.rng.choice(relevant)
    text = (
        f"Use {tool} for every {t.category} question: call it before answering, pass "
        "the plain input, and answer with exactly what it returns."
    )
    return SetToolDescription(server=server, tool=tool, description=text)


def _remove_tool(t: TemplateInput) -> EditOp | None:
    never = [
        (s, tool)
        for s, tool in offered_tools(t.spec, t.tool_names)
        if not any(is_relevant(tool, c) for c in t.all_categories)
    ]
    if not never:
        return None
    server, tool = t.rng.choice(never)
    return RemoveTool(server=server, tool=tool)


def _memory_top_k(t: TemplateInput) -> EditOp | None:
    v = _choice_other(t.rng, [1, 3, 5, 10], t.spec.memory.top_k)
    return SetMemoryParam(param="top_k", value=v)


CATALOG: dict[str, tuple[Template, ...]] = {
    "intelligence": (_temperature, _top_k, _max_tokens, _repeat_penalty),
    "engine": (_tool_call_format, _context_length),
    "agent": (
        _prompt_hint,
        _tool_policy,
        _max_turns,
        _repeat_guard,
        _loop,
        _few_shot,
        _verifier,
        _rendering_choice,
        _rendering_text,
    ),
    "tools_memory": (_tool_description, _remove_tool, _memory_top_k),
}
assert set(CATALOG) == set(PRIMITIVE_GROUPS)


def draw_op(t: TemplateInput, group: str | None = None, tries: int = 8) -> EditOp | None:
    """One templated op: a primitive group (uniform unless given), then one of its templates.

    Drawing the group first keeps the four primitives equally likely although the agent
    catalog is the largest.
    """
    for _ in range(tries):
        g = group or t.rng.choice(PRIMITIVE_GROUPS)
        op = t.rng.choice(CATALOG[g])(t)
        if op is not None:
            return op
    return None


def template_input(ctx: ProposerContext, cluster: Cluster, rng: random.Random) -> TemplateInput:
    categories = sorted({c for cl in ctx.diagnosis.clusters for c in cl.categories})
    category = rng.choice(cluster.categories) if cluster.categories else cluster.id
    return TemplateInput(
        spec=ctx.spec,
        cluster=cluster,
        category=category,
        all_categories=categories,
        tool_names=ctx.tool_names,
        rng=rng,
    )


class RandomTemplateProposer:
    """The paper's template-random baseline (no teacher)."""

    name = "random"

    def __init__(self, max_attempts_per_proposal: int = 12) -> None:
        self.max_attempts_per_proposal = max_attempts_per_proposal
        self.last_report = ProposerReport(proposer=self.name)

    async def propose(self, ctx: ProposerContext) -> list[Proposal]:
        report = self.last_report = ProposerReport(proposer=self.name)
        clusters = clusters_by_failure(ctx.diagnosis)
        if not clusters or ctx.max_proposals <= 0:
            return []
        admitted = ProposalFilter(ctx, report)
        out: list[Proposal] = []
        draws = {c.id: 0 for c in clusters}
        budget = ctx.max_proposals * self.max_attempts_per_proposal
        # Round-robin over clusters, highest failure rate first; a cluster whose draw is
        # dropped tries its next draw on its next turn.
        while len(out) < ctx.max_proposals and budget > 0:
            for cluster in clusters:
                if len(out) >= ctx.max_proposals or budget <= 0:
                    break
                budget -= 1
                i = draws[cluster.id]
                draws[cluster.id] += 1
                proposal = self._draw(ctx, cluster, i)
                if proposal is None:
                    report.dropped.append(f"{cluster.id}#{i}: no template fits this spec")
                elif admitted.admit(proposal, label=f"{cluster.id}#{i}"):
                    out.append(proposal)
        report.returned = len(out)
        return out

    def _draw(self, ctx: ProposerContext, cluster: Cluster, i: int) -> Proposal | None:
        rng = random.Random(f"{ctx.seed}:{cluster.id}:{i}")
        t = template_input(ctx, cluster, rng)
        n_ops = rng.choice((1, 2))
        ops: list[EditOp] = []
        groups = rng.sample(PRIMITIVE_GROUPS, n_ops)  # two ops: two different primitives
        for g in groups:
            op = draw_op(t, g)
            if op is not None:
                ops.append(op)
        if not ops:
            return None
        return Proposal(
            target_cluster=cluster.id,
            ops=ops,
            proposer=self.name,
            rationale=f"template-random draw {i} for {cluster.id} ({t.category}, "
            f"{cluster.signature or 'no signature'})",
        )
