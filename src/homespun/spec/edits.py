"""Typed edits of a spec, their pure application, and their risk tiers.

An edit op changes one field (or one list) that the runtime reads; a proposal is one or
more ops, possibly across primitives, aimed at one failure cluster. `apply_proposal` never
touches disk: it returns a new, validated spec that is guaranteed to round-trip through TOML.
The risk tier of a proposal comes from a fixed table keyed by op (overridable in
`[learning.tier_overrides]`), never from whoever proposed it.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import SpecError, dotted, issues_from_validation
from .io import render_spec
from .models import (
    OP_NAMES,
    AdapterSpec,
    AgentLoop,
    CatalogArguments,
    FewShotExample,
    FewShotStyle,
    ReplyProtocol,
    ResultFraming,
    RiskTier,
    Spec,
    ToolCallFormat,
    ToolPolicy,
    VerifierSpec,
)


class EditError(ValueError):
    """An op that cannot be applied to this spec; the message names op and field."""


class EditNotAvailable(EditError):
    """An op this installation cannot carry out (e.g. training without the train extra)."""


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- Intelligence


class SetGenerationParam(_Op):
    op: Literal["set_generation_param"] = "set_generation_param"
    param: Literal["temperature", "top_p", "top_k", "max_tokens", "repeat_penalty", "seed"]
    value: float


class SetModel(_Op):
    op: Literal["set_model"] = "set_model"
    model: str = Field(min_length=1)


class TrainLora(_Op):
    """Fine-tune a LoRA adapter on the target cluster (needs the `train` extra)."""

    op: Literal["train_lora"] = "train_lora"
    steps: int = Field(30, ge=1, le=10_000)
    rank: int = Field(8, ge=1, le=256)
    learning_rate: float = Field(2e-4, gt=0, le=1)
    data: Literal["teacher_gold", "high_feedback_traces"] = "teacher_gold"
    adapter: AdapterSpec | None = Field(
        None, description="Filled in by the search after training; a proposer leaves it out."
    )


# --------------------------------------------------------------------------- Engine


class SetEngineParam(_Op):
    op: Literal["set_engine_param"] = "set_engine_param"
    param: Literal["context_length", "threads", "parallel", "tool_call_format", "timeout_s"]
    value: float | str


# --------------------------------------------------------------------------- Agents


class ReplaceSystemPrompt(_Op):
    op: Literal["replace_system_prompt"] = "replace_system_prompt"
    text: str = Field(min_length=1)


class PatchSystemPrompt(_Op):
    op: Literal["patch_system_prompt"] = "patch_system_prompt"
    mode: Literal["append", "prepend", "replace_text"]
    text: str
    old: str = Field("", description="The text to replace (mode = replace_text).")


class SetAgentLoop(_Op):
    op: Literal["set_agent_loop"] = "set_agent_loop"
    loop: AgentLoop


class SetAgentParam(_Op):
    op: Literal["set_agent_param"] = "set_agent_param"
    param: Literal["max_turns", "tool_policy", "max_plan_steps", "repeat_guard"]
    value: int | bool | ToolPolicy


class EditFewShot(_Op):
    op: Literal["edit_few_shot"] = "edit_few_shot"
    action: Literal["add", "remove", "replace"]
    index: int = Field(-1, description="Which example (remove/replace); -1 = the last.")
    example: FewShotExample | None = None


class AddVerifier(_Op):
    op: Literal["add_verifier"] = "add_verifier"
    verifier: VerifierSpec


RENDERING_CHOICES: dict[str, tuple[Any, ...]] = {
    "catalog_arguments": CatalogArguments.__args__,  # type: ignore[attr-defined]
    "reply_protocol": ReplyProtocol.__args__,  # type: ignore[attr-defined]
    "parallel_calls": (False, True),
    "calls_as_list": (False, True),
    "result_framing": ResultFraming.__args__,  # type: ignore[attr-defined]
    "few_shot_style": FewShotStyle.__args__,  # type: ignore[attr-defined]
}
"""The values each choice of `[agent.rendering]` takes (set_rendering_param)."""
_BOOL_RENDERING = {name for name, choices in RENDERING_CHOICES.items() if choices == (False, True)}


class SetRenderingParam(_Op):
    """Choose how tools, the reply protocol, tool results or the worked examples are shown
    to the model (a choice of `[agent.rendering]`)."""

    op: Literal["set_rendering_param"] = "set_rendering_param"
    param: Literal[
        "catalog_arguments",
        "reply_protocol",
        "parallel_calls",
        "calls_as_list",
        "result_framing",
        "few_shot_style",
    ]
    value: bool | CatalogArguments | ReplyProtocol | ResultFraming | FewShotStyle


class SetRenderingText(_Op):
    """Rewrite a text of `[agent.rendering]`: how a tool result (or error) is written back to
    the model ({name} and {result} are filled in), the instruction after tool results, or what
    to do when no tool fits the request (empty = none for those two)."""

    op: Literal["set_rendering_text"] = "set_rendering_text"
    param: Literal["result_template", "error_template", "continuation", "no_tool_rule"]
    text: str


# --------------------------------------------------------------------------- Tools & Memory


class AddTool(_Op):
    """Offer a tool of a declared server to the model (undoes remove_tool)."""

    op: Literal["add_tool"] = "add_tool"
    server: str
    tool: str


class RemoveTool(_Op):
    """Stop offering a tool to the model."""

    op: Literal["remove_tool"] = "remove_tool"
    server: str
    tool: str


class SetToolDescription(_Op):
    op: Literal["set_tool_description"] = "set_tool_description"
    server: str
    tool: str
    description: str = Field(min_length=1)


class SetMemoryParam(_Op):
    op: Literal["set_memory_param"] = "set_memory_param"
    param: Literal["top_k"]
    value: int


EditOp = Annotated[
    SetGenerationParam
    | SetModel
    | TrainLora
    | SetEngineParam
    | ReplaceSystemPrompt
    | PatchSystemPrompt
    | SetAgentLoop
    | SetAgentParam
    | EditFewShot
    | AddVerifier
    | SetRenderingParam
    | SetRenderingText
    | AddTool
    | RemoveTool
    | SetToolDescription
    | SetMemoryParam,
    Field(discriminator="op"),
]

PRIMITIVE_OF: dict[str, str] = {
    "set_generation_param": "intelligence",
    "set_model": "intelligence",
    "train_lora": "intelligence",
    "set_engine_param": "engine",
    "replace_system_prompt": "agent",
    "patch_system_prompt": "agent",
    "set_agent_loop": "agent",
    "set_agent_param": "agent",
    "edit_few_shot": "agent",
    "add_verifier": "agent",
    "set_rendering_param": "agent",
    "set_rendering_text": "agent",
    "add_tool": "tools",
    "remove_tool": "tools",
    "set_tool_description": "tools",
    "set_memory_param": "memory",
}

# The original system's table: parameters and tools are auto, prompts and loop changes are
# reviewed, training is manual. A rendering choice picks one of a few fixed renderings (auto);
# a rendering text is prompt text the model reads (review).
DEFAULT_TIERS: dict[str, RiskTier] = {
    "set_generation_param": "auto",
    "set_model": "auto",
    "set_engine_param": "auto",
    "set_agent_param": "auto",
    "add_tool": "auto",
    "remove_tool": "auto",
    "set_tool_description": "auto",
    "set_memory_param": "auto",
    "set_rendering_param": "auto",
    "replace_system_prompt": "review",
    "patch_system_prompt": "review",
    "set_agent_loop": "review",
    "edit_few_shot": "review",
    "add_verifier": "review",
    "set_rendering_text": "review",
    "train_lora": "manual",
}
_TIER_ORDER = {"auto": 0, "review": 1, "manual": 2}


class Proposal(BaseModel):
    """One candidate edit: one or more ops aimed at one failure cluster."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=lambda: uuid.uuid4().hex[:10])
    target_cluster: str
    ops: list[EditOp] = Field(min_length=1)
    rationale: str = ""
    proposer: str = ""

    def primitives(self) -> list[str]:
        return sorted({PRIMITIVE_OF[o.op] for o in self.ops})


def risk_tier(proposal: Proposal, spec: Spec) -> RiskTier:
    """The strictest tier among the proposal's ops (overrides from the spec apply)."""
    overrides = spec.learning.tier_overrides
    tiers = [overrides.get(o.op, DEFAULT_TIERS[o.op]) for o in proposal.ops]
    return max(tiers, key=_TIER_ORDER.__getitem__)


# --------------------------------------------------------------------------- apply


def _server(spec: Spec, name: str, where: str):
    try:
        return spec.tools.server(name)
    except KeyError:
        names = ", ".join(s.name for s in spec.tools.servers)
        raise EditError(f"{where}: no tool server named {name!r} (servers: {names})") from None


def _apply_op(spec: Spec, op: Any, where: str) -> None:
    """Mutates `spec` (a private deep copy) by one op."""
    match op:
        case SetGenerationParam(param=param, value=value):
            if param in ("top_k", "max_tokens", "seed"):
                if value != int(value):
                    raise EditError(f"{where}: intelligence.{param} must be a whole number")
                value = int(value)
            setattr(spec.intelligence, param, value)
        case SetModel(model=model):
            spec.intelligence.model = model
        case TrainLora(adapter=adapter):
            if adapter is None:
                raise EditNotAvailable(
                    f"{where}: train_lora has no trained adapter yet: the search session "
                    "trains it (needs the train extra: pip install 'homespun[train]')"
                )
            spec.intelligence.adapters = [*spec.intelligence.adapters, adapter]
        case SetEngineParam(param=param, value=value):
            if param == "tool_call_format":
                if value not in ToolCallFormat.__args__:  # type: ignore[attr-defined]
                    raise EditError(
                        f"{where}: engine.tool_call_format must be native or "
                        f"constrained_json, got {value!r}"
                    )
            else:
                try:
                    value = float(value) if param == "timeout_s" else int(float(value))
                except (TypeError, ValueError):
                    raise EditError(
                        f"{where}: engine.{param} must be a number, got {value!r}"
                    ) from None
            setattr(spec.engine, param, value)
        case ReplaceSystemPrompt(text=text):
            spec.agent.system_prompt = text
        case PatchSystemPrompt(mode=mode, text=text, old=old):
            prompt = spec.agent.system_prompt
            if mode == "append":
                prompt = f"{prompt.rstrip()}\n{text}"
            elif mode == "prepend":
                prompt = f"{text}\n{prompt.lstrip()}"
            else:
                if not old or old not in prompt:
                    raise EditError(f"{where}: agent.system_prompt does not contain {old!r}")
                prompt = prompt.replace(old, text, 1)
            spec.agent.system_prompt = prompt
        case SetAgentLoop(loop=loop):
            spec.agent.loop = loop
        case SetAgentParam(param=param, value=value):
            # pydantic would quietly read True as max_turns = 1 and 0 as repeat_guard = false
            if param == "repeat_guard" and not isinstance(value, bool):
                raise EditError(f"{where}: agent.repeat_guard must be true or false, got {value!r}")
            if param != "repeat_guard" and isinstance(value, bool):
                raise EditError(f"{where}: agent.{param} cannot be {value!r}")
            setattr(spec.agent, param, value)
        case EditFewShot(action=action, index=index, example=example):
            shots = list(spec.agent.few_shot)
            if action == "add":
                if example is None:
                    raise EditError(f"{where}: edit_few_shot add needs an example")
                shots.append(example)
            else:
                if not shots or not -len(shots) <= index < len(shots):
                    raise EditError(f"{where}: agent.few_shot has no example {index}")
                if action == "remove":
                    shots.pop(index)
                else:
                    if example is None:
                        raise EditError(f"{where}: edit_few_shot replace needs an example")
                    shots[index] = example
            spec.agent.few_shot = shots
        case AddVerifier(verifier=verifier):
            spec.agent.verifiers = [*spec.agent.verifiers, verifier]
        case SetRenderingParam(param=param, value=value):
            # the value's type union admits any choice's value (and 1 == True): check it
            # against this param's choices and name the mismatch
            choices = RENDERING_CHOICES[param]
            if (param in _BOOL_RENDERING) != isinstance(value, bool) or value not in choices:
                raise EditError(
                    f"{where}: agent.rendering.{param} must be one of "
                    f"{', '.join(map(repr, choices))}, got {value!r}"
                )
            setattr(spec.agent.rendering, param, value)
        case SetRenderingText(param=param, text=text):
            setattr(spec.agent.rendering, param, text)
        case AddTool(server=server, tool=tool):
            s = _server(spec, server, where)
            if tool not in s.disabled and s.allows(tool):
                raise EditError(f"{where}: tool {tool!r} of {server!r} is already offered")
            s.disabled = [t for t in s.disabled if t != tool]
            if "*" not in s.enabled and tool not in s.enabled:
                s.enabled = [*s.enabled, tool]
        case RemoveTool(server=server, tool=tool):
            s = _server(spec, server, where)
            if not s.allows(tool) or tool in s.disabled:
                raise EditError(f"{where}: tool {tool!r} of {server!r} is not offered")
            if "*" in s.enabled:
                s.disabled = [*s.disabled, tool]
            else:
                s.enabled = [t for t in s.enabled if t != tool]
        case SetToolDescription(server=server, tool=tool, description=description):
            s = _server(spec, server, where)
            s.descriptions = {**s.descriptions, tool: description}
        case SetMemoryParam(param=param, value=value):
            setattr(spec.memory, param, value)
        case _:  # pragma: no cover - the discriminated union is exhaustive
            raise EditError(f"{where}: unknown op {op!r}")


def _table_of(spec: Spec, op: Any) -> str:
    """The dotted path of the sub-model an op assigns to (for error messages)."""
    if PRIMITIVE_OF[op.op] == "tools":
        names = [s.name for s in spec.tools.servers]
        if op.server in names:
            return f"tools.servers[{names.index(op.server)}]"
    if op.op in ("set_rendering_param", "set_rendering_text"):
        return "agent.rendering"
    return PRIMITIVE_OF[op.op]


def apply_proposal(spec: Spec, proposal: Proposal) -> Spec:
    """The spec with every op of `proposal` applied; `spec` itself is untouched.

    Raises EditError (naming op and field) if an op does not fit this spec or the result
    would not be a valid spec.
    """
    new = spec.model_copy(deep=True)
    for i, op in enumerate(proposal.ops):
        where = f"proposal {proposal.id} op {i} ({op.op})"
        try:
            _apply_op(new, op, where)
        except ValidationError as exc:
            # the error's loc is relative to the sub-model the op assigned to
            issue = exc.errors()[0]
            field = ".".join(filter(None, (_table_of(new, op), dotted(tuple(issue["loc"])))))
            reason = issue["msg"].removeprefix("Value error, ")
            raise EditError(f"{where}: {field}: {reason}") from exc
    try:
        validated = Spec.model_validate(new.to_data())
        render_spec(validated)  # must round-trip through TOML
    except ValidationError as exc:
        issues = "; ".join(str(i) for i in issues_from_validation(exc))
        raise EditError(f"proposal {proposal.id} makes an invalid spec: {issues}") from exc
    except SpecError as exc:
        raise EditError(f"proposal {proposal.id} makes an invalid spec: {exc}") from exc
    return validated


def describe_proposal(proposal: Proposal) -> str:
    parts = []
    for op in proposal.ops:
        fields = op.model_dump(exclude={"op"})
        shown = ", ".join(f"{k}={_short(v)}" for k, v in fields.items())
        parts.append(f"{op.op}({shown})")
    return "; ".join(parts)


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 1] + "…"


assert set(DEFAULT_TIERS) == set(PRIMITIVE_OF) == set(OP_NAMES)
