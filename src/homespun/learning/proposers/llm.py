"""The LLM proposer: the teacher reads the spec, the clusters and the history, and proposes
compound edits (the paper's LLM-guided spec search, phase 2 "Plan").

The reply is structured: the teacher must call one tool, `submit_proposals`, whose arguments
schema is built from the edit-op pydantic models. Each op is parsed on its own, so one bad op
is reported and dropped without losing the rest of the reply. The cost meter is checked
before the call and charged after it, whatever the reply holds.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.utils.json_schema import dereference_refs
from pydantic import TypeAdapter, ValidationError

from homespun.engines.cost import max_output_tokens as model_max_output_tokens
from homespun.engines.cost import metered_call
from homespun.engines.providers import bound_reply_tokens
from homespun.learning.clusters import Cluster, Diagnosis
from homespun.spec import Spec
from homespun.spec.edits import (
    PRIMITIVE_OF,
    EditOp,
    Proposal,
    describe_proposal,
)

from .base import (
    HistoryEntry,
    ProposalFilter,
    ProposerContext,
    ProposerReport,
    clusters_by_failure,
)

OP_MODELS: dict[str, type] = {
    cls.model_fields["op"].default: cls for cls in typing.get_args(typing.get_args(EditOp)[0])
}
_OP_ADAPTER: TypeAdapter[Any] = TypeAdapter(EditOp)

SUBMIT_PROPOSALS = "submit_proposals"

# --------------------------------------------------------------------------- op schemas


def _strip_titles(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "title":
                continue
            if key == "properties" and isinstance(value, dict):
                out[key] = {name: _strip_titles(sub) for name, sub in value.items()}
            else:
                out[key] = _strip_titles(value)
        return out
    if isinstance(node, list):
        return [_strip_titles(v) for v in node]
    return node


def op_schema(op_name: str) -> dict[str, Any]:
    """JSON schema of one op, self-contained (no $refs), with `op` required."""
    schema = dereference_refs(OP_MODELS[op_name].model_json_schema())
    schema.pop("$defs", None)
    schema = _strip_titles(schema)
    schema["required"] = ["op", *[r for r in schema.get("required", []) if r != "op"]]
    return schema


def available_ops(spec: Spec) -> list[str]:
    """Ops this installation can carry out (train_lora needs the train extra and the
    embedded engine)."""
    from homespun.learning.training.edit import training_available

    names = list(OP_MODELS)
    if not training_available(spec):
        names.remove("train_lora")
    return names


def ops_array_schema(op_names: Sequence[str]) -> dict[str, Any]:
    return {"type": "array", "minItems": 1, "items": {"anyOf": [op_schema(n) for n in op_names]}}


def submit_proposals_tool(
    cluster_ids: list[str], op_names: Sequence[str], max_proposals: int
) -> dict[str, Any]:
    """The `submit_proposals` tool (OpenAI function format, which every chat model binds)."""
    proposal = {
        "type": "object",
        "properties": {
            "target_cluster": {
                "type": "string",
                "enum": cluster_ids,
                "description": "Id of the failure cluster this edit fixes.",
            },
            "rationale": {
                "type": "string",
                "description": "Why these ops fix that cluster, in a sentence.",
            },
            "ops": ops_array_schema(op_names),
        },
        "required": ["target_cluster", "rationale", "ops"],
        "additionalProperties": False,
    }
    return {
        "type": "function",
        "function": {
            "name": SUBMIT_PROPOSALS,
            "description": "Submit the proposed spec edits. Each proposal is one or more ops "
            "(they may span primitives) aimed at one failure cluster.",
            "parameters": {
                "type": "object",
                "properties": {
                    "proposals": {"type": "array", "items": proposal, "maxItems": max_proposals}
                },
                "required": ["proposals"],
                "additionalProperties": False,
            },
        },
    }


# --------------------------------------------------------------------------- prompt parts


def _v(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_spec_summary(spec: Spec) -> str:
    """The editable fields and their current values, TOML-like."""
    i, e, a, m = spec.intelligence, spec.engine, spec.agent, spec.memory
    lines = ["[intelligence]"]
    lines += [
        f"{k} = {_v(getattr(i, k))}"
        for k in ("model", "temperature", "top_p", "top_k", "max_tokens", "repeat_penalty", "seed")
    ]
    lines += ["", "[engine]", f"backend = {_v(e.backend)}  # not editable"]
    lines += [
        f"{k} = {_v(getattr(e, k))}"
        for k in ("context_length", "threads", "parallel", "tool_call_format", "timeout_s")
    ]
    lines += ["", "[agent]"]
    lines += [
        f"{k} = {_v(getattr(a, k))}"
        for k in ("loop", "max_turns", "tool_policy", "max_plan_steps", "repeat_guard")
    ]
    lines.append(f'system_prompt = """\n{a.system_prompt}\n"""')
    if a.few_shot:
        lines.append("few_shot = [")
        lines += [f"  {n}: {_v(ex.model_dump())}," for n, ex in enumerate(a.few_shot)]
        lines.append("]")
    else:
        lines.append("few_shot = []")
    lines.append(f"verifiers = {_v([v.model_dump() for v in a.verifiers])}")
    lines += ["", "[agent.rendering]"]
    lines += [f"{k} = {_v(v)}" for k, v in a.rendering.model_dump().items()]
    for s in spec.tools.servers:
        lines += [
            "",
            f"[tools.{s.name}]",
            f"kind = {_v(s.kind)}",
            f"enabled = {_v(s.enabled)}",
            f"disabled = {_v(s.disabled)}",
            f"descriptions = {_v(s.descriptions)}",
        ]
    lines += ["", "[memory]", f"top_k = {m.top_k}"]
    return "\n".join(lines)


def render_cluster(c: Cluster) -> str:
    teacher = "not measured" if c.teacher_success_rate is None else f"{c.teacher_success_rate:.0%}"
    return (
        f"- `{c.id}` ({c.name}): categories {', '.join(c.categories) or '-'}; "
        f"student failure rate {c.student_failure_rate:.0%}; teacher success {teacher}; "
        f"signature {c.signature or '-'}; {len(c.task_ids)} failing task(s).\n"
        f"  Skill gap: {c.skill_gap}"
    )


def render_clusters(diagnosis: Diagnosis) -> str:
    return "\n".join(render_cluster(c) for c in clusters_by_failure(diagnosis))


def render_deltas(deltas: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:+.2f}" for k, v in sorted(deltas.items())) or "not measured"


def render_history(history: Iterable[HistoryEntry]) -> str:
    lines = []
    for h in history:
        p = h.proposal
        lines.append(
            f"- [{h.decision}] target {p.target_cluster} ({p.proposer or 'unknown'}): "
            f"{describe_proposal(p)}\n"
            f"  gate: {h.reason or '-'}; per-cluster deltas: {render_deltas(h.deltas)}"
        )
    return "\n".join(lines) or "(nothing tried yet)"


def render_tool_names(tool_names: dict[str, list[str]]) -> str:
    return (
        "\n".join(f"- {server}: {', '.join(names)}" for server, names in sorted(tool_names.items()))
        or "(not listed)"
    )


def render_catalog(op_names: Sequence[str]) -> str:
    return "\n".join(f"- {n} ({PRIMITIVE_OF[n]}): {json.dumps(op_schema(n))}" for n in op_names)


def _catalog_models() -> str:
    from homespun.engines.catalog import CATALOG

    return ", ".join(CATALOG)


SYSTEM_PROMPT = (
    "You are the teacher in homespun's spec search. A small local model (the student) runs a "
    "personal assistant whose whole configuration is a typed spec with four editable "
    "primitives: Intelligence (model, sampling), Engine (runtime), Agents (loop, prompts, "
    "few-shot examples, tool policy, verifiers) and Tools & Memory (which tools are offered, "
    "the tool descriptions the model sees, memory retrieval). You propose typed edits of that "
    "spec. A held-out gate accepts a proposal only if the score of its target cluster rises "
    "and no other cluster drops by more than a small tolerance, so aim each proposal at one "
    "cluster and avoid collateral damage. A proposal may combine several ops across "
    "primitives when the fix needs them together. Learn from the history: never resubmit a "
    "rejected edit, and prefer directions whose deltas were positive. Answer only by calling "
    f"{SUBMIT_PROPOSALS}."
)


def build_messages(
    ctx: ProposerContext, op_names: Sequence[str], max_proposals: int
) -> list[BaseMessage]:
    body = "\n\n".join(
        [
            "## Current spec (editable fields)\n" + render_spec_summary(ctx.spec),
            "## Tools each server offers (names for tool ops)\n"
            + render_tool_names(ctx.tool_names),
            "## Models in the catalog (for set_model with the embedded backend)\n"
            + _catalog_models(),
            "## Failure clusters (highest failure rate first)\n" + render_clusters(ctx.diagnosis),
            "## Edit ops you may use (JSON schema of each)\n" + render_catalog(op_names),
            "## History of proposals and the gate's decisions\n" + render_history(ctx.history),
            f"## Task\nPropose at most {max_proposals} proposal(s), each aimed at one cluster id "
            "above, most promising first. Call submit_proposals once with all of them.",
        ]
    )
    return [SystemMessage(content=SYSTEM_PROMPT), HumanMessage(content=body)]


# --------------------------------------------------------------------------- teacher call


def proposals_reply_tokens(max_proposals: int) -> int:
    """The bound on a submit_proposals reply: a proposal (cluster id, a sentence of
    rationale, a few ops, perhaps a prompt patch) is under ~300 tokens of JSON. Sized to the
    JSON because a local teacher writes it at ~10 tokens/s on 2 cores (Qwen2.5-Coder-1.5B):
    four proposals, 1,408 tokens, are two minutes at most, not the seven of 4096."""
    return 128 + 320 * max(1, max_proposals)


async def call_teacher(
    ctx: ProposerContext,
    messages: list[BaseMessage],
    tool: dict,
    report: ProposerReport,
    *,
    max_output_tokens: int,
) -> AIMessage:
    """One teacher call forced to `tool`, through `metered_call` on `ctx.meter`
    (BudgetExceeded from its check propagates and no call is made). The reply is bounded at
    `max_output_tokens` where the teacher allows it (`bound_reply_tokens`: a local one whose
    reply is decoded under the tool's JSON schema); the meter's estimate is the bound the
    teacher really has."""
    assert ctx.teacher is not None
    name = tool["function"]["name"]
    bounded = bound_reply_tokens(ctx.teacher, max_output_tokens)
    model = bounded.bind_tools([tool], tool_choice=name)
    estimate = model_max_output_tokens(bounded, default=max_output_tokens)
    reply = await metered_call(ctx.meter, model, messages, tools=[tool], max_output_tokens=estimate)
    report.teacher_calls += 1
    return reply


def tool_args(reply: AIMessage, name: str) -> dict[str, Any] | None:
    for call in reply.tool_calls:
        if call["name"] == name:
            return call["args"]
    return None


def _maybe_json(value: Any) -> Any:
    # Some models send nested arrays as JSON strings.
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def parse_ops(
    raw_ops: Any, allowed: Sequence[str], label: str, report: ProposerReport
) -> list[Any]:
    """Valid ops of `raw_ops`; each invalid one is reported in `report.dropped`."""
    raw_ops = _maybe_json(raw_ops)
    if not isinstance(raw_ops, list):
        report.dropped.append(f"{label}: ops is not a list")
        return []
    ops = []
    for j, raw in enumerate(_maybe_json(r) for r in raw_ops):
        name = raw.get("op", "?") if isinstance(raw, dict) else "?"
        try:
            op = _OP_ADAPTER.validate_python(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"][1:]) or "op"
            got = repr(err.get("input"))
            got = got if len(got) <= 60 else got[:59] + "…"
            report.dropped.append(f"{label} op {j} ({name}): {where}: {err['msg']} (got {got})")
            continue
        if op.op not in allowed:
            report.dropped.append(f"{label} op {j} ({name}): not allowed here")
            continue
        ops.append(op)
    return ops


def parse_proposals(
    args: dict[str, Any],
    ctx: ProposerContext,
    allowed: Sequence[str],
    proposer: str,
    report: ProposerReport,
    limit: int,
) -> list[Proposal]:
    raw = _maybe_json(args.get("proposals"))
    if not isinstance(raw, list):
        report.dropped.append(f"{SUBMIT_PROPOSALS}: 'proposals' is not a list")
        return []
    gate = ProposalFilter(ctx, report)
    out: list[Proposal] = []
    for k, item in enumerate(_maybe_json(r) for r in raw):
        label = f"proposal {k}"
        if not isinstance(item, dict):
            report.dropped.append(f"{label}: not an object")
            continue
        ops = parse_ops(item.get("ops"), allowed, label, report)
        if not ops:
            report.dropped.append(f"{label}: no valid op left")
            continue
        proposal = Proposal(
            target_cluster=str(item.get("target_cluster", "")),
            ops=ops,
            rationale=str(item.get("rationale", "")),
            proposer=proposer,
        )
        if len(out) >= limit:
            report.dropped.append(f"{label}: over the cap of {limit} proposals")
            continue
        if gate.admit(proposal, label=label):
            out.append(proposal)
    return out


class LLMProposer:
    """The teacher proposes compound edits per cluster, one capped call per session.

    A reply with no usable proposal at all (no submit_proposals call, JSON cut off, every
    op invalid) is asked again once, with the problems listed (`invalid_retries`); if the
    retry gives none either, the session gets no proposal from it and `last_report` says
    why. `max_calls` > 1 also asks again when a reply gave some but fewer than the cap.
    """

    name = "llm"

    def __init__(
        self, max_calls: int = 1, max_output_tokens: int | None = None, invalid_retries: int = 1
    ) -> None:
        self.max_calls = max_calls
        self.max_output_tokens = max_output_tokens  # None: proposals_reply_tokens(the cap)
        self.invalid_retries = invalid_retries
        self.last_report = ProposerReport(proposer=self.name)

    async def propose(self, ctx: ProposerContext) -> list[Proposal]:
        report = self.last_report = ProposerReport(proposer=self.name)
        if ctx.teacher is None:
            raise ValueError(
                "the llm proposer needs a teacher: set learning.teacher "
                "(or use learning.proposer = 'random')"
            )
        if not ctx.diagnosis.clusters or ctx.max_proposals <= 0:
            return []
        op_names = available_ops(ctx.spec)
        cluster_ids = [c.id for c in clusters_by_failure(ctx.diagnosis)]
        tool = submit_proposals_tool(cluster_ids, op_names, ctx.max_proposals)
        first = messages = build_messages(ctx, op_names, ctx.max_proposals)
        max_out = self.max_output_tokens or proposals_reply_tokens(ctx.max_proposals)
        out: list[Proposal] = []
        calls = retries = 0
        while True:
            reply = await call_teacher(ctx, messages, tool, report, max_output_tokens=max_out)
            args = tool_args(reply, SUBMIT_PROPOSALS)
            dropped_before = len(report.dropped)
            got: list[Proposal] = []
            if args is None:
                report.notes.append(f"the teacher did not call {SUBMIT_PROPOSALS}")
            else:
                # What this call proposed counts as history for a later call's repeats.
                got = parse_proposals(
                    args,
                    _with_history(ctx, out),
                    op_names,
                    self.name,
                    report,
                    ctx.max_proposals - len(out),
                )
            out += got
            if len(out) >= ctx.max_proposals:
                break
            if not got and retries < self.invalid_retries:
                retries += 1  # an invalid reply is asked again without using up a call
            elif calls + 1 < self.max_calls:
                calls += 1
            else:
                if not got and not out:
                    report.notes.append(
                        f"no valid proposal in {report.teacher_calls} teacher repl"
                        f"{'y' if report.teacher_calls == 1 else 'ies'}"
                    )
                break
            # Tell the teacher what went wrong with its reply.
            problems = report.dropped[dropped_before:] or report.notes[-1:]
            messages = [
                *first[:2],
                HumanMessage(
                    content=(
                        "Your previous reply gave too few usable proposals. Problems:\n"
                        + "\n".join(f"- {p}" for p in problems)
                        + "\nAlready accepted for evaluation: "
                        + ("; ".join(describe_proposal(p) for p in out) or "none")
                        + f"\nCall {SUBMIT_PROPOSALS} again with at most "
                        + f"{ctx.max_proposals - len(out)} new proposal(s)."
                    )
                ),
            ]
        report.returned = len(out)
        return out


def _with_history(ctx: ProposerContext, pending: list[Proposal]) -> ProposerContext:
    if not pending:
        return ctx
    extra = [HistoryEntry(proposal=p, decision="pending") for p in pending]
    return replace(ctx, history=[*ctx.history, *extra])
