"""The commented default spec that `homespun init` writes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tomlkit

from .io import parse_spec
from .models import DEFAULT_SYSTEM_PROMPT, Spec

_TEMPLATE = """\
# homespun spec: the whole configuration of your assistant.
# Edit it by hand or let `homespun learning run` propose edits; every accepted edit is a
# git commit in HOMESPUN_HOME/.git, so `homespun learning rollback` can undo it.
# `homespun spec validate` checks this file; `homespun spec show` prints the effective spec.

[intelligence]
# Catalog name (`homespun models list`), a path to a .gguf file, or the backend's model id.
model = "smollm2-135m"
temperature = 0.0      # 0..2
top_p = 0.95           # (0, 1]
top_k = 40             # 0 disables top-k
max_tokens = 256       # completion cap per model call
repeat_penalty = 1.1   # 1.0 = off
seed = 42              # -1 = random per call

[engine]
# embedded (in-process llama.cpp) | ollama | openai_compatible | anthropic | openai
backend = "embedded"
base_url = ""          # server URL for ollama / openai_compatible (vLLM, llama-server, LM Studio)
api_key_env = ""       # NAME of the environment variable holding the API key (never the key)
context_length = 4096
threads = 0            # 0 = all cores
parallel = 1           # parallel decoding slots (embedded)
# native: the backend's tool-calling API; constrained_json: JSON-schema constrained decoding
# over the bound tools, so even a tiny model emits a well-formed call or a final answer.
tool_call_format = "constrained_json"
timeout_s = 300.0

[agent]
loop = "react"         # simple | react | plan_execute
system_prompt = {system_prompt}
max_turns = 6          # model calls per question
tool_policy = "auto"   # auto | required_first | none
max_plan_steps = 4     # plan_execute only
repeat_guard = true    # a repeated identical tool call gets "answer now" instead of a rerun
# verifiers = [{{ kind = "non_empty", feedback = "Give a final answer." }}]

# Worked examples shown before every conversation (a tool round trip when `tool` is set).
[[agent.few_shot]]
user = "What is 12 * 12? Use the calculator."
tool = "calculator"
arguments = {{ expression = "12 * 12" }}
tool_result = "144"
assistant = "12 * 12 = 144"

[[agent.few_shot]]
user = "Where is my passport? Search memory."
tool = "search_memory"
arguments = {{ query = "passport" }}
tool_result = "[3] My passport is in the desk drawer."
assistant = "Your passport is in the desk drawer."

# How the model is shown its tools, the reply protocol, tool results and the examples above.
[agent.rendering]
catalog_arguments = "names_types"  # names_types | descriptions | full_schema (constrained_json)
reply_protocol = "brief"           # brief | explicit (constrained_json)
parallel_calls = false             # constrained_json: several calls in one step, as a list
result_framing = "auto"            # auto | user_message | tool_message
result_template = "Tool {{name}} returned:\\n{{result}}"
error_template = "Tool {{name}} returned an error:\\n{{result}}"
continuation = ""                  # said after tool results, e.g. "Call another tool or answer."
no_tool_rule = ""                  # constrained_json: what to do when no tool fits the request
few_shot_style = "turns"           # turns (made-up earlier turns) | system_block

[memory]
backend = "sqlite_fts5"
top_k = 5              # memories returned per search

# Tool servers. The descriptions below are exactly what the model is shown.
# Add your own MCP servers, e.g.
#   [[tools.servers]]
#   name = "weather"
#   kind = "stdio"                # or "http" with url = "https://..." and headers
#   command = "uvx"
#   args = ["some-mcp-server"]
#   env = {{ API_KEY = "${{WEATHER_API_KEY}}" }}   # read from your environment
#   enabled = ["*"]
[[tools.servers]]
name = "core"
kind = "builtin"
builtin = "core"
enabled = ["*"]
sensitive = false

[tools.servers.descriptions]
{descriptions}

# Chat channels: nobody may talk to the assistant until listed here. Tokens come from the
# environment (or HOMESPUN_HOME/secrets.env, mode 0600), never from this file.
[channels.telegram]
allowed_users = []     # Telegram user ids, e.g. [123456789]
token_env = "TELEGRAM_BOT_TOKEN"

[channels.slack]
allowed_users = []     # Slack user ids, e.g. ["U012ABCDEF"]
bot_token_env = "SLACK_BOT_TOKEN"
app_token_env = "SLACK_APP_TOKEN"

[learning]
teacher = ""           # e.g. "anthropic:claude-opus-4-6"; empty = rule-based diagnoser
proposer = "random"    # llm | random | evolutionary
teacher_reruns_per_cluster = 3   # tasks the teacher re-runs per cluster (0 = off)

[learning.gate]
rule = "paired"        # paired: an exact paired test on the same tasks | strict: the paper's GateOK
alpha = 0.05           # paired: how often an edit that changes nothing may pass
regression_alpha = 0.05  # paired: another cluster dropping > eps at this p rejects
max_regression = 0.5   # paired: another cluster dropping more than this rejects outright
eps = 0.01             # max regression allowed on any other failure cluster
chunk = 5              # candidate tasks per look; stops once the rest cannot change the decision
subsample = 50         # held-out tasks per gate evaluation
seed = 0               # seeds the search / gate / test split and the gate subsample
test_fraction = 0.25   # share of each category kept as an untouched test split (0 = none)
repeats = 1            # runs per gate task; more help only a stochastic student (temperature > 0)

[learning.loop]
stagnation_k = 5
stagnation_eps = 0.01
max_sessions = 20

[learning.budgets]
max_cost_per_session_usd = 5.0
max_total_cost_usd = 50.0
max_tool_calls_per_diagnosis = 30
max_proposals_per_session = 4

[learning.privacy]
scrub_pii = true
min_feedback = 0.7

[learning.reward]
alpha = 0.5
beta = 0.1
gamma = 0.1
delta = 0.3
"""


# Per catalog model: the settings that differ from the template, chosen by measurement
# (README, "Per-model defaults"). Keys are dotted table names; a model not listed here (a .gguf
# path, a backend's model id) gets the template as written.
DEFAULT_SPEC_MODEL = "smollm2-135m"
"""The model `homespun init` writes when none is named (the catalog's default)."""

MODEL_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    # The template's rendering (argument names and types, worked examples as turns) is best
    # here: examples in a system block dropped the starter benchmark from 0.294 to 0.118.
    "smollm2-135m": {},
    # BFCL search-split tasks (benchmarks/choose_defaults.py): on 18, 0.333 with the template's
    # rendering, 0.500 with full schemas, the explicit protocol, parallel calls and a
    # continuation, 0.556 adding the examples block; on 27, 0.519 for that, 0.593 with the rule
    # for requests no tool serves and without the worked examples (both of which call a tool).
    "qwen2.5-coder-1.5b": {
        "agent": {"few_shot": []},
        "agent.rendering": {
            "catalog_arguments": "full_schema",
            "reply_protocol": "explicit",
            "parallel_calls": True,
            "continuation": "Call another tool if the request needs it, or give the final answer.",
            "no_tool_rule": "If no tool can do what is asked, call none: answer and say so.",
            "few_shot_style": "system_block",
        },
    },
}


def default_spec_text(core_descriptions: Mapping[str, str], model: str = DEFAULT_SPEC_MODEL) -> str:
    """The commented default spec for `model`, with the built-in tools' descriptions written
    out and the model's measured defaults (MODEL_DEFAULTS) applied; comments are kept."""
    descriptions = "\n".join(
        f"{name} = {tomlkit.string(text).as_string()}" for name, text in core_descriptions.items()
    )
    text = _TEMPLATE.format(
        system_prompt=tomlkit.string(DEFAULT_SYSTEM_PROMPT).as_string(),
        descriptions=descriptions,
    )
    doc = tomlkit.parse(text)
    doc["intelligence"]["model"] = model  # type: ignore[index]
    for dotted, values in MODEL_DEFAULTS.get(model, {}).items():
        table: Any = doc
        for part in dotted.split("."):
            table = table[part]
        for key, value in values.items():
            table[key] = value
    text = tomlkit.dumps(doc)
    parse_spec(text, "<default spec>")  # the template must always be a valid spec
    return text


def default_spec(core_descriptions: Mapping[str, str], model: str = DEFAULT_SPEC_MODEL) -> Spec:
    return parse_spec(default_spec_text(core_descriptions, model), "<default spec>")
