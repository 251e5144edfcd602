"""Telemetry: energy from each vendor's counter (libraries patched where there is no such
hardware), cost from energy or tokens, and what the trace and the CLI say about it."""

from __future__ import annotations

import sqlite3
import sys
import textwrap
from pathlib import Path

import pynvml
import pytest
from typer.testing import CliRunner

from homespun.engines import telemetry
from homespun.engines.telemetry import (
    AmdEnergyCounter,
    CounterMeter,
    EnergyMeter,
    NullMeter,
    NvidiaEnergyCounter,
    RaplEnergyCounter,
    RunMeter,
    amdsmi_module,
    detect_energy_counter,
    electricity_usd_per_kwh,
    measures_local_energy,
    new_energy_meter,
    per_query,
    run_cost_usd,
)
from homespun.engines.testing import ScriptedChatModel, tool_call
from homespun.graphs.runner import run_assistant
from homespun.spec import Spec
from homespun.stores.traces import TraceStore

runner = CliRunner()


# --------------------------------------------------------------------------- fakes


class FakeGpus:
    """Two GPUs behind patched nvidia-ml-py calls; `mj` are their energy counters (mJ since
    driver load), advanced by whatever the test says the GPUs did."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, supported: bool = True):
        self.mj = [7_000_000, 9_000_000]
        self.supported = supported
        self.inits = 0
        monkeypatch.setattr(pynvml, "nvmlInit", self._init)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", lambda: len(self.mj))
        monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", lambda i: ("gpu", i))
        monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", self._energy)
        monkeypatch.setattr(pynvml, "nvmlDeviceGetName", lambda h: f"NVIDIA H100 #{h[1]}")
        monkeypatch.setattr(
            pynvml, "nvmlDeviceGetMemoryInfo", lambda h: type("Mem", (), {"total": 80 * 1024**3})()
        )
        telemetry.reset_energy_detection()
        monkeypatch.setattr(telemetry, "DEFAULT_RAPL_ROOT", Path("/nonexistent"))

    def _init(self) -> None:
        self.inits += 1

    def _energy(self, handle) -> int:
        if not self.supported:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.mj[handle[1]]

    def work(self, mj0: int, mj1: int) -> None:
        self.mj[0] += mj0
        self.mj[1] += mj1


@pytest.fixture(autouse=True)
def _fresh_detection():
    telemetry.reset_energy_detection()
    yield
    telemetry.reset_energy_detection()


def rapl_zone(
    root: Path, name: str, label: str, energy_uj: int, max_uj: int = 262_143_328_850
) -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return zone


# --------------------------------------------------------------------------- NVIDIA


def test_nvidia_energy_is_the_counter_difference_summed_over_gpus(monkeypatch):
    gpus = FakeGpus(monkeypatch)
    counter = detect_energy_counter(rapl_root="/nonexistent")
    assert isinstance(counter, NvidiaEnergyCounter) and counter.name == "nvidia"
    meter = CounterMeter(counter)
    assert isinstance(meter, EnergyMeter) and meter.source == "nvidia"
    meter.start()
    gpus.work(1200, 300)  # mJ
    assert meter.stop() == pytest.approx(1.5)
    # the counter counts since driver load: an idle window is 0 J, not the total so far
    meter.start()
    assert meter.stop() == 0.0


def test_gpus_without_the_energy_counter_are_not_a_source(monkeypatch, tmp_path):
    FakeGpus(monkeypatch, supported=False)  # pre-Volta: NVML_ERROR_NOT_SUPPORTED
    assert NvidiaEnergyCounter.probe() is None
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 1_000)
    counter = detect_energy_counter(rapl_root=tmp_path)
    assert counter is not None and counter.name == "rapl"  # the next source is used


def test_a_counter_that_fails_mid_run_reports_not_measured(monkeypatch):
    gpus = FakeGpus(monkeypatch)
    meter = CounterMeter(detect_energy_counter(rapl_root="/nonexistent"))
    meter.start()
    gpus.supported = False  # e.g. the driver went away
    assert meter.stop() is None


async def test_a_run_records_nvidia_energy_and_its_electricity_cost(settings, monkeypatch):
    gpus = FakeGpus(monkeypatch)
    monkeypatch.setenv("HOMESPUN_ELECTRICITY_USD_PER_KWH", "0.30")

    def answer(messages):
        gpus.work(2_000, 1_600)  # the GPUs' share of generating this answer: 3.6 J
        return "42"

    res = await run_assistant(
        Spec(), settings, "what is 6*7?", model=ScriptedChatModel(script=[answer]), tools=[]
    )
    t = res.trace
    assert t.status == "ok"
    assert t.energy_source == "nvidia" and t.energy_j == pytest.approx(3.6)
    assert t.cost_usd == pytest.approx(3.6 / 3.6e6 * 0.30)  # J -> kWh x $/kWh
    stored = TraceStore(settings.traces_db).get(t.id)
    assert (stored.energy_j, stored.energy_source) == (pytest.approx(3.6), "nvidia")
    assert stored.cost_usd == pytest.approx(3e-7)

    from homespun.cli import app

    shown = runner.invoke(app, ["traces", "show", t.id])
    assert shown.exit_code == 0, shown.output
    assert "energy: 3.6 J (nvidia)" in shown.output and "cost: $0.00000030" in shown.output


# --------------------------------------------------------------------------- AMD


def test_amdsmi_that_raises_keyerror_on_import_is_not_available(monkeypatch, tmp_path):
    # What amdsmi does on a machine without ROCm: KeyError from its import, not ImportError.
    pkg = tmp_path / "amdsmi"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import os\nROCM = os.environ['ROCM_PATH_NOT_SET_X']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "amdsmi", raising=False)
    with pytest.raises(KeyError):
        import amdsmi  # noqa: F401
    monkeypatch.delitem(sys.modules, "amdsmi", raising=False)
    assert amdsmi_module() is None
    assert AmdEnergyCounter.probe() is None


def _fake_amdsmi(monkeypatch, *, init_error: Exception | None = None, old_api: bool = False):
    module = type(sys)("amdsmi")
    state = {"ticks": [1_000_000, 2_000_000]}

    def init():
        if init_error:
            raise init_error

    def energy(h):
        key = "power" if old_api else "energy_accumulator"
        return {key: state["ticks"][h], "counter_resolution": 15.3, "timestamp": 0}

    module.amdsmi_init = init
    module.amdsmi_get_processor_handles = lambda: [0, 1]
    module.amdsmi_get_energy_count = energy
    monkeypatch.setitem(sys.modules, "amdsmi", module)
    return state


@pytest.mark.parametrize("old_api", [False, True])
def test_amd_energy_is_accumulator_ticks_times_resolution(monkeypatch, old_api):
    state = _fake_amdsmi(monkeypatch, old_api=old_api)
    counter = AmdEnergyCounter.probe()
    assert counter is not None and counter.name == "amd"
    meter = CounterMeter(counter)
    meter.start()
    state["ticks"][0] += 100_000
    state["ticks"][1] += 30_000
    assert meter.stop() == pytest.approx(130_000 * 15.3 / 1e6)  # µJ -> J


def test_amdsmi_init_failure_is_not_available(monkeypatch):
    _fake_amdsmi(monkeypatch, init_error=RuntimeError("AMDSMI_STATUS_DRIVER_NOT_LOADED"))
    assert amdsmi_module() is None and AmdEnergyCounter.probe() is None


# --------------------------------------------------------------------------- RAPL


def test_rapl_sums_packages_not_their_subzones(tmp_path):
    p0 = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 5_000_000)
    rapl_zone(tmp_path, "intel-rapl:0:0", "core", 4_000_000)  # inside package 0
    p1 = rapl_zone(tmp_path, "intel-rapl:1", "package-1", 8_000_000)
    meter = CounterMeter(RaplEnergyCounter.probe(tmp_path))
    assert meter.source == "rapl"
    meter.start()
    (p0 / "energy_uj").write_text("7500000\n")
    (p1 / "energy_uj").write_text("8500000\n")
    (tmp_path / "intel-rapl:0:0" / "energy_uj").write_text("9000000\n")
    assert meter.stop() == pytest.approx(3.0)


def test_rapl_wraps_around_at_max_energy_range(tmp_path):
    zone = rapl_zone(tmp_path, "intel-rapl:0", "package-0", 999_000_000, max_uj=1_000_000_000)
    meter = CounterMeter(RaplEnergyCounter.probe(tmp_path))
    meter.start()
    (zone / "energy_uj").write_text("4000000\n")  # wrapped past 1e9 µJ
    assert meter.stop() == pytest.approx(5.0)  # 1 J to the top, 4 J after the wrap


def test_rapl_skips_psys_when_packages_exist_and_unreadable_zones(tmp_path):
    rapl_zone(tmp_path, "intel-rapl:0", "package-0", 100)
    rapl_zone(tmp_path, "intel-rapl:1", "psys", 100)  # the whole platform: packages inside
    locked = tmp_path / "intel-rapl:2"
    locked.mkdir()
    (locked / "name").write_text("package-1\n")
    (locked / "max_energy_range_uj").write_text("1000\n")
    (locked / "energy_uj").mkdir()  # unreadable (as a root-only file is to a user)
    counter = RaplEnergyCounter.probe(tmp_path)
    assert [z.path.name for z in counter._zones] == ["intel-rapl:0"]


def test_no_readable_rapl_is_no_source(tmp_path):
    assert RaplEnergyCounter.probe(tmp_path / "missing") is None
    assert RaplEnergyCounter.probe(tmp_path) is None  # empty powercap


# --------------------------------------------------------------------------- this machine


def _this_machine_has_a_counter() -> bool:
    return detect_energy_counter() is not None


async def test_unpatched_on_this_machine_energy_and_cost_are_not_measured(settings):
    if _this_machine_has_a_counter():
        pytest.skip("this machine has an energy counter")
    meter = new_energy_meter()
    assert isinstance(meter, NullMeter) and meter.source is None
    meter.start()
    assert meter.stop() is None

    model = ScriptedChatModel(script=[tool_call("noop"), "done"])

    from langchain_core.tools import tool

    @tool
    def noop() -> str:
        """Do nothing."""
        return "ok"

    res = await run_assistant(Spec(), settings, "hi", model=model, tools=[noop])
    t = TraceStore(settings.traces_db).get(res.trace.id)
    assert t.status == "ok"
    assert t.energy_j is None and t.energy_source is None
    assert t.cost_usd is None  # a local model with no energy reading: not $0
    assert t.tokens_per_s is not None and t.tokens_per_s > 0  # 2 calls x 5 tokens, timed

    from homespun.cli import app

    shown = runner.invoke(app, ["traces", "show", t.id])
    assert shown.exit_code == 0, shown.output
    assert "energy: not measured" in shown.output
    assert "cost: not measured" in shown.output
    assert "tok/s" in shown.output


# --------------------------------------------------------------------------- model calls


async def test_every_model_call_is_timed_with_its_tokens(settings):
    from langchain_core.tools import tool

    @tool
    def noop() -> str:
        """Do nothing."""
        return "ok"

    meter = RunMeter(NullMeter())
    meter.start()
    model = ScriptedChatModel(
        script=[tool_call("noop"), tool_call("noop"), "done"],
        usage={"input_tokens": 7, "output_tokens": 3},
    )
    from langchain_core.messages import HumanMessage

    from homespun.graphs.assistant import build_assistant_graph, new_question_state

    graph = build_assistant_graph(Spec(), model, [noop])
    await graph.ainvoke(
        new_question_state(HumanMessage("go")),
        {"callbacks": [meter.recorder], "recursion_limit": 50},
    )
    measured = meter.stop()
    assert [(c.prompt_tokens, c.completion_tokens) for c in measured.model_calls] == [(7, 3)] * 3
    assert all(c.latency_s > 0 and c.tokens_per_s > 0 for c in measured.model_calls)
    assert measured.tokens_per_s == pytest.approx(9 / measured.model_time_s)
    assert measured.energy_j is None and measured.energy_source is None


def test_overlapping_runs_do_not_claim_each_others_energy(monkeypatch):
    gpus = FakeGpus(monkeypatch)
    counter = detect_energy_counter(rapl_root="/nonexistent")
    a, b = RunMeter(CounterMeter(counter)), RunMeter(CounterMeter(counter))
    a.start()
    b.start()
    gpus.work(1000, 0)
    assert b.stop().energy_j is None and a.stop().energy_j is None
    alone = RunMeter(CounterMeter(counter))
    alone.start()
    gpus.work(1000, 0)
    assert alone.stop().energy_j == pytest.approx(1.0)


def test_cloud_and_remote_engines_are_not_metered_here():
    assert not measures_local_energy("anthropic")
    assert not measures_local_energy("openai", "")
    assert not measures_local_energy("ollama", "http://gpu-box.lan:11434")
    assert measures_local_energy("ollama", "http://127.0.0.1:11434")
    assert measures_local_energy("openai_compatible", "http://localhost:8000/v1")
    assert measures_local_energy("openai_compatible", "http://[::1]:8000/v1")
    assert measures_local_energy("embedded")
    assert isinstance(RunMeter.for_engine("anthropic", energy=CounterMeter(None)).energy, NullMeter)


# --------------------------------------------------------------------------- dollars


def test_cost_cloud_by_tokens_local_by_energy_never_zero_pretending():
    price = (3.0, 15.0)  # $/Mtok
    assert run_cost_usd(
        backend="anthropic",
        prompt_tokens=1000,
        completion_tokens=200,
        energy_j=None,
        price_per_mtok=price,
        usd_per_kwh=0.15,
    ) == pytest.approx((1000 * 3 + 200 * 15) / 1e6)
    assert (
        run_cost_usd(
            backend="openai",
            prompt_tokens=1,
            completion_tokens=1,
            energy_j=None,
            price_per_mtok=None,
            usd_per_kwh=0.15,
        )
        is None
    )  # unknown price
    assert run_cost_usd(
        backend="embedded",
        prompt_tokens=10,
        completion_tokens=10,
        energy_j=7200.0,
        price_per_mtok=None,
        usd_per_kwh=0.15,
    ) == pytest.approx(0.0003)  # 2 Wh at $0.15/kWh
    assert (
        run_cost_usd(
            backend="embedded",
            prompt_tokens=10,
            completion_tokens=10,
            energy_j=None,
            price_per_mtok=None,
            usd_per_kwh=0.15,
        )
        is None
    )


async def test_a_cloud_run_is_priced_from_the_table_and_not_metered(settings, monkeypatch):
    gpus = FakeGpus(monkeypatch)  # a GPU here does not see the cloud model's work
    spec = Spec()
    spec.engine.tool_call_format = "native"
    spec.engine.backend = "anthropic"
    spec.intelligence.model = "claude-sonnet-4-5"

    def answer(messages):
        gpus.work(5000, 5000)
        return "hi"

    res = await run_assistant(
        spec, settings, "hi", tools=[], model=ScriptedChatModel(script=[answer])
    )
    t = res.trace
    assert t.energy_j is None and t.energy_source is None
    assert t.cost_usd == pytest.approx((10 * 3.0 + 5 * 15.0) / 1e6)

    spec.intelligence.model = "some-model-without-a-price"
    res = await run_assistant(
        spec, settings, "hi", tools=[], model=ScriptedChatModel(script=["hi"])
    )
    assert res.trace.cost_usd is None


def test_electricity_price_from_env():
    assert electricity_usd_per_kwh({}) == 0.15
    assert electricity_usd_per_kwh({"HOMESPUN_ELECTRICITY_USD_PER_KWH": "0.32"}) == 0.32
    for bad in ("cheap", "-1", "nan"):
        with pytest.raises(ValueError, match="HOMESPUN_ELECTRICITY_USD_PER_KWH"):
            electricity_usd_per_kwh({"HOMESPUN_ELECTRICITY_USD_PER_KWH": bad})


def test_per_query_means_or_batch_energy_or_not_measured():
    # every run measured: the mean
    assert per_query(energy_j=[2.0, 4.0], cost_usd=[None, None], usd_per_kwh=0.36) == (
        pytest.approx(3.0),
        pytest.approx(3.0 / 3.6e6 * 0.36),
    )
    # overlapping fresh runs measured as a batch, one reused run with its own reading
    joules, _ = per_query(
        energy_j=[None, None, 3.0],
        cost_usd=[None] * 3,
        fresh=[True, True, False],
        batch_energy_j=9.0,
    )
    assert joules == pytest.approx(4.0)
    # a reused run without a reading: the total is unknown
    assert per_query(
        energy_j=[None, None], cost_usd=[None, None], fresh=[True, False], batch_energy_j=9.0
    ) == (None, None)
    # no counter at all
    assert per_query(energy_j=[None], cost_usd=[None]) == (None, None)
    # a cloud model: costs known per run, energy not measured
    assert per_query(energy_j=[None, None], cost_usd=[0.01, 0.03], local=False) == (
        None,
        pytest.approx(0.02),
    )


# --------------------------------------------------------------------------- trace storage


def test_an_old_trace_database_gains_the_telemetry_columns(tmp_path):
    path = tmp_path / "traces.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        textwrap.dedent("""
        create table traces (id text primary key, created_at float, query text,
          spec_hash text, thread_id text, loop text, model text, backend text, status text,
          final_answer text, error text, messages text, latency_s float,
          prompt_tokens integer, completion_tokens integer, model_calls integer,
          feedback float, sensitive integer, source text);
        insert into traces values ('old1', 1.0, 'q', 'h', 't', 'react', 'm', 'embedded',
          'ok', 'a', null, '[]', 0.5, 1, 2, 1, null, 0, 'cli');
    """)
    )
    conn.commit()
    conn.close()
    store = TraceStore(path)
    old = store.get("old1")
    assert old.final_answer == "a"
    assert (old.energy_j, old.energy_source, old.cost_usd, old.tokens_per_s) == (None,) * 4
    t = store.start(
        query="q2", spec_hash="h", thread_id="t", loop="react", model="m", backend="embedded"
    )
    t.status, t.energy_j, t.energy_source, t.cost_usd, t.tokens_per_s = (
        "ok",
        12.5,
        "rapl",
        5e-7,
        33.0,
    )
    store.finish(t)
    again = TraceStore(path).get(t.id)  # reopening migrates nothing twice
    assert (again.energy_j, again.energy_source, again.cost_usd, again.tokens_per_s) == (
        12.5,
        "rapl",
        5e-7,
        33.0,
    )


# --------------------------------------------------------------------------- bench run


def _bench(monkeypatch, *extra: str):
    from homespun.cli import app
    from homespun.graphs import search_loop
    from homespun.learning import evaluation
    from tests.learning.toy import StudentFactory, ToyBenchmark

    bench = ToyBenchmark(per_category=2)
    monkeypatch.setattr(search_loop, "get_benchmark", lambda name, *a: bench)
    real = evaluation.evaluate

    async def evaluate(*a, **k):
        return await real(*a, **{**k, "student": StudentFactory()})

    monkeypatch.setattr(evaluation, "evaluate", evaluate)
    assert runner.invoke(app, ["init"]).exit_code == 0
    return runner.invoke(
        app, ["bench", "run", "--benchmark", "toy", *extra], env={"COLUMNS": "160"}
    )


def test_bench_run_reports_energy_and_cost_as_not_measured_here(home, monkeypatch):
    if _this_machine_has_a_counter():
        pytest.skip("this machine has an energy counter")
    res = _bench(monkeypatch)
    assert res.exit_code == 0, res.output
    for col in ("accuracy", "s/query", "J/query", "$/query"):
        assert col in res.output
    all_row = next(line for line in res.output.splitlines() if " all " in line)
    assert all_row.count("not measured") == 2  # J/query and $/query, not 0
    assert "energy: not measured" in res.output


@pytest.mark.parametrize("concurrency", ["1", "3"])
def test_bench_run_reports_measured_joules_and_dollars(home, monkeypatch, concurrency):
    gpus = FakeGpus(monkeypatch)
    # each read of the counter sees the GPUs 1 J further on
    monkeypatch.setattr(
        pynvml,
        "nvmlDeviceGetTotalEnergyConsumption",
        lambda h: (gpus.work(1000, 0), gpus.mj[h[1]])[1],
    )
    res = _bench(monkeypatch, "--concurrency", concurrency)
    assert res.exit_code == 0, res.output
    all_row = next(line for line in res.output.splitlines() if " all " in line)
    assert "not measured" not in all_row, res.output  # overlapping runs: the batch's energy
    assert " J " in all_row and "$0.0" in all_row
    assert "energy: nvidia counter" in res.output
