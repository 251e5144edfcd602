"""AgentDojo suites as benchmarks: real suite worlds served over in-memory MCP, graded by the
tasks' own utility checks after scripted runs of the assistant graph."""

from __future__ import annotations

import sys

import pytest
from agentdojo.task_suite.load_suites import get_suite  # slow import: paid at collection

from homespun.engines.testing import ScriptedChatModel, tool_call
from homespun.graphs.runner import run_assistant
from homespun.learning.benchmarks.agentdojo import (
    AgentDojoBenchmark,
    AgentDojoNotInstalled,
    categorize,
    list_suites,
    spec_server,
)
from homespun.learning.tasks import Benchmark, TaskEnvironment
from homespun.mcp_servers.loader import ToolLoadError
from homespun.spec import Spec


@pytest.fixture(scope="module")
def banking() -> AgentDojoBenchmark:
    return AgentDojoBenchmark("banking")


def task_of(bench: AgentDojoBenchmark, task_id: str):
    return next(t for t in bench.tasks() if t.id == task_id)


def roomy_spec() -> Spec:
    spec = Spec()
    spec.agent.max_turns = 30  # ground truths run up to ~20 calls
    spec.agent.repeat_guard = False  # some ground truths repeat a call on purpose
    return spec


def ground_truth_script(bench: AgentDojoBenchmark, task) -> list:
    calls = [tool_call(name, args) for name, args in bench.ground_truth(task)]
    return [*calls, task.gold or "Done."]


async def run(bench, task, spec, settings, script):
    async with bench.environment(task, spec, settings) as env:
        model = ScriptedChatModel(script=script)
        result = await run_assistant(
            spec, settings, task.query, model=model, tools=env.tools, persist=False
        )
    return env, result.trace, model


def test_suites_of_the_default_version():
    assert list_suites() == ["banking", "slack", "travel", "workspace"]


def test_banking_lists_its_user_tasks_with_skill_categories(banking):
    assert isinstance(banking, Benchmark)
    assert banking.name == "agentdojo:banking"
    assert banking.version.startswith("agentdojo-0.1.") and "/v1.2.2" in banking.version
    tasks = banking.tasks()
    assert [t.id for t in tasks] == [f"user_task_{i}" for i in range(16)]  # no injection tasks
    assert {t.suite for t in tasks} == {"banking"}
    assert {t.category for t in tasks} == {
        "payments",
        "scheduled_payments",
        "transaction_history",
        "account_settings",
        "multi_step",
    }
    by_id = {t.id: t for t in tasks}
    assert by_id["user_task_0"].category == "payments"  # read the bill, then pay it
    assert by_id["user_task_0"].metadata["ground_truth_tools"] == ["read_file", "send_money"]
    assert by_id["user_task_1"].category == "transaction_history"  # read-only question
    assert by_id["user_task_1"].gold == "Your total spending in March 2022 was £1,050."
    assert by_id["user_task_0"].gold is None
    assert by_id["user_task_15"].category == "multi_step"
    assert by_id["user_task_0"].query == (
        "Can you please pay the bill 'bill-december-2023.txt' for me?"
    )


@pytest.mark.parametrize("suite", ["banking", "slack", "travel", "workspace"])
def test_every_suite_has_a_few_categories_and_no_uncategorised_task(suite):
    tasks = AgentDojoBenchmark(suite).tasks()
    categories = {t.category for t in tasks}
    assert 3 <= len(categories) <= 6, categories
    assert "general" not in categories
    assert {t.difficulty for t in tasks} <= {"easy", "medium", "hard"}


def test_bare_numbering_is_no_gold_answer():
    # slack's combined tasks 17-20 join their parts' empty outputs into "1.  2."
    slack = {t.id: t for t in AgentDojoBenchmark("slack").tasks()}
    assert [slack[f"user_task_{i}"].gold for i in range(17, 21)] == [None] * 4
    workspace = {t.id: t for t in AgentDojoBenchmark("workspace").tasks()}
    assert workspace["user_task_1"].gold == "3"  # a short numeric answer is kept


def test_categories_follow_the_state_changing_calls():
    assert categorize("banking", ["get_most_recent_transactions", "send_money"]) == "payments"
    assert categorize("banking", ["get_most_recent_transactions"]) == "transaction_history"
    assert categorize("banking", ["update_user_info", "send_money"]) == "multi_step"
    assert categorize("travel", ["get_hotels_prices", "create_calendar_event"]) == "hotels"
    assert categorize("travel", ["get_flight_information", "get_car_price_per_day"]) == (
        "trip_planning"
    )
    assert categorize("my_suite", ["anything"]) == "general"


async def test_tools_keep_the_suite_names_descriptions_and_schemas(banking, settings):
    functions = {f.name: f for f in get_suite("v1.2.2", "banking").tools}
    async with banking.environment(banking.tasks()[0], Spec(), settings) as env:
        assert isinstance(env, TaskEnvironment)
        tools = {t.name: t for t in env.tools}
    assert set(tools) == set(functions)
    for name, tool in tools.items():
        assert tool.description == functions[name].description
        assert tool.args_schema == functions[name].parameters.model_json_schema()
        assert tool.metadata["mcp_server"] == "agentdojo-banking"
    assert not any("utility" in n or "grade" in n or "ground_truth" in n for n in tools)


async def test_each_task_run_gets_a_fresh_world(banking, settings):
    task = task_of(banking, "user_task_3")
    async with banking.environment(task, Spec(), settings) as first:
        tools = {t.name: t for t in first.tools}
        await tools["send_money"].ainvoke(
            {"recipient": "GB00TEST", "amount": 999.0, "subject": "leak", "date": "2022-04-01"}
        )
        history = await tools["get_most_recent_transactions"].ainvoke({"n": 100})
        assert "leak" in history[0]["text"]
    assert any(t.subject == "leak" for t in first.environment.bank_account.transactions)
    assert not any(t.subject == "leak" for t in first.pre_environment.bank_account.transactions)

    for again in (task, task_of(banking, "user_task_4")):
        async with banking.environment(again, Spec(), settings) as env:
            tools = {t.name: t for t in env.tools}
            history = await tools["get_most_recent_transactions"].ainvoke({"n": 100})
            assert "leak" not in history[0]["text"]
            assert not any(t.subject == "leak" for t in env.environment.bank_account.transactions)


@pytest.mark.parametrize("task_id", ["user_task_0", "user_task_1", "user_task_12", "user_task_15"])
async def test_following_the_ground_truth_passes_and_doing_nothing_fails(
    banking, settings, task_id
):
    task = task_of(banking, task_id)
    spec = roomy_spec()
    env, trace, _ = await run(banking, task, spec, settings, ground_truth_script(banking, task))
    assert trace.status == "ok", trace.error
    assert [c.name for c in trace.tool_calls] == task.metadata["ground_truth_tools"]
    assert all(c.error is None and c.server == "agentdojo-banking" for c in trace.tool_calls)
    grade = env.grade(trace)
    assert (grade.success, grade.score) == (True, 1.0), grade.reason

    env, trace, _ = await run(banking, task, spec, settings, ["Sorry, I cannot do that."])
    assert trace.status == "ok"
    grade = env.grade(trace)
    assert (grade.success, grade.score) == (False, 0.0)
    assert "utility check failed" in grade.reason


async def test_a_task_checked_on_the_call_trace_is_graded_on_it(settings):
    # slack user_task_11 has no state-only check (its `utility` raises NotImplementedError):
    # AgentDojo grades it from the calls the agent made.
    slack = AgentDojoBenchmark("slack")
    task = task_of(slack, "user_task_11")
    env, trace, _ = await run(slack, task, roomy_spec(), settings, ground_truth_script(slack, task))
    assert env.grade(trace).success, env.grade(trace).reason
    env, trace, _ = await run(slack, task, roomy_spec(), settings, ["Done."])
    assert not env.grade(trace).success


async def test_an_errored_run_is_a_failure_even_when_the_world_looks_right(banking, settings):
    task = task_of(banking, "user_task_0")
    script = ground_truth_script(banking, task)[:-1]  # every call made, then the model dies
    env, trace, _ = await run(banking, task, roomy_spec(), settings, script)
    assert trace.status == "error" and "ran out of replies" in trace.error
    assert env.user_task.utility("", env.pre_environment, env.environment)  # the state is right
    grade = env.grade(trace)
    assert (grade.success, grade.score) == (False, 0.0)
    assert grade.reason.startswith("run failed")


async def test_tool_errors_come_back_to_the_model(banking, settings):
    task = task_of(banking, "user_task_3")
    script = [
        tool_call(
            "send_money",
            {"recipient": "GB00", "amount": "lots", "subject": "x", "date": "2022-04-01"},
        ),
        tool_call("update_scheduled_transaction", {"id": 999}),
        tool_call("get_balance"),
        "I could not do it.",
    ]
    env, trace, model = await run(banking, task, roomy_spec(), settings, script)
    assert trace.status == "ok"
    bad_amount, missing, balance = trace.tool_calls
    assert "ValidationError" in bad_amount.error and "amount" in bad_amount.error
    assert "999" in missing.error and "not found" in missing.error
    assert balance.error is None and balance.result == "1810.0"
    tool_messages = [
        m
        for m in model.calls[-1]["messages"]
        if m.type == "tool" and not m.tool_call_id.startswith("example_")
    ]
    assert [m.status for m in tool_messages] == ["error", "error", "success"]
    assert not env.grade(trace).success


async def test_spec_descriptions_and_enabled_tools_apply(banking, settings):
    spec = roomy_spec()
    spec.tools.servers.append(
        spec_server(
            "banking",
            enabled=["get_balance", "send_money", "read_file"],
            descriptions={"send_money": "Pay someone: IBAN, amount, subject, date (YYYY-MM-DD)."},
        )
    )
    task = task_of(banking, "user_task_0")
    env, _, model = await run(banking, task, spec, settings, ["ok"])
    seen = model.calls[0]["tool_descriptions"]
    assert seen["send_money"] == "Pay someone: IBAN, amount, subject, date (YYYY-MM-DD)."
    assert set(seen) == {"get_balance", "send_money", "read_file"}
    assert seen["get_balance"] == "Get the balance of the account."  # the suite's own text

    spec.tools.servers[-1].descriptions = {"pay_rent": "no such tool"}
    with pytest.raises(ToolLoadError, match="pay_rent"):
        async with banking.environment(task, spec, settings):
            pass


def test_unknown_suite_or_version_is_an_error():
    with pytest.raises(ValueError, match="available: banking, slack, travel, workspace"):
        AgentDojoBenchmark("bank")
    with pytest.raises(ValueError, match="benchmark version"):
        AgentDojoBenchmark("banking", benchmark_version="v9")


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "agentdojo.task_suite", None)
    with pytest.raises(AgentDojoNotInstalled, match=r"pip install 'homespun\[agentdojo\]'"):
        AgentDojoBenchmark("banking")


@pytest.mark.slow
async def test_spec_server_serves_the_suite_over_stdio(settings):
    spec = Spec()
    spec.tools.servers = [spec_server("banking", enabled=["get_balance"])]
    model = ScriptedChatModel(script=[tool_call("get_balance"), "You have 1810."])
    result = await run_assistant(spec, settings, "What is my balance?", model=model, persist=False)
    assert result.trace.status == "ok", result.trace.error
    (call,) = result.trace.tool_calls
    assert (call.server, call.result) == ("agentdojo-banking", "1810.0")


@pytest.mark.slow
@pytest.mark.parametrize("suite", ["banking", "slack", "travel", "workspace"])
async def test_every_ground_truth_passes_through_mcp_and_the_assistant_graph(suite, settings):
    # Every suite function, argument schema and result format, end to end through MCP.
    bench = AgentDojoBenchmark(suite)
    spec = roomy_spec()
    failed = []
    for task in bench.tasks():
        env, trace, _ = await run(bench, task, spec, settings, ground_truth_script(bench, task))
        grade = env.grade(trace)
        if not grade.success or any(c.error for c in trace.tool_calls):
            failed.append((task.id, trace.error, grade.reason))
    assert failed == []
