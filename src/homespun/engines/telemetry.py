"""What a run costs: latency, tokens, tokens/s, energy in joules and dollars.

Energy comes from a hardware counter or not at all. The sources, in the order they are tried:

- ``"nvidia"``: NVML's total-energy counter (``nvmlDeviceGetTotalEnergyConsumption``, mJ since
  the driver loaded; Volta and newer), summed over every GPU, through nvidia-ml-py;
- ``"amd"``: AMD SMI's energy accumulator (ticks x resolution in µJ), summed over every GPU;
  ``import amdsmi`` raises KeyError (not ImportError) on machines without ROCm, and
  ``amdsmi_init`` fails without the driver, so every failure means "not this source";
- ``"rapl"``: Linux powercap, ``/sys/class/powercap/intel-rapl:N/energy_uj`` for each CPU
  package (AMD CPUs appear there too), where readable (often root-only), with wrap-around at
  ``max_energy_range_uj``.

The first source that initialises and reads is used, and named. A counter covers its own
device only (a GPU counter does not see the CPU), and includes everything that device did in
the window, idle power and other processes included. No counter means ``None``, which is
reported as "not measured": never 0 and never an estimate.

Dollars: a cloud model costs its list price per token; a local one costs its measured energy
times the electricity price (``HOMESPUN_ELECTRICITY_USD_PER_KWH``, default 0.15), and "not
measured" when its energy is.
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.outputs import LLMResult

__all__ = [
    "CLOUD_BACKENDS",
    "DEFAULT_USD_PER_KWH",
    "ELECTRICITY_ENV",
    "AmdEnergyCounter",
    "CounterMeter",
    "EnergyCounter",
    "EnergyMeter",
    "EnergySource",
    "ModelCallRecorder",
    "ModelCallStats",
    "NullMeter",
    "NvidiaEnergyCounter",
    "RaplEnergyCounter",
    "RunMeter",
    "RunTelemetry",
    "amdsmi_module",
    "detect_energy_counter",
    "electricity_usd_per_kwh",
    "energy_cost_usd",
    "measures_local_energy",
    "new_energy_meter",
    "nvml_module",
    "per_query",
    "reset_energy_detection",
    "run_cost_usd",
    "token_cost_usd",
]

EnergySource = Literal["nvidia", "amd", "rapl"]

ELECTRICITY_ENV = "HOMESPUN_ELECTRICITY_USD_PER_KWH"
DEFAULT_USD_PER_KWH = 0.15
_J_PER_KWH = 3.6e6

CLOUD_BACKENDS = frozenset({"anthropic", "openai"})
"""Backends whose model runs on someone else's hardware: priced per token, energy unknown."""

DEFAULT_RAPL_ROOT = Path("/sys/class/powercap")
_RAPL_ZONE = re.compile(r"intel-rapl:\d+$")  # packages; intel-rapl:N:M are their sub-zones


# --------------------------------------------------------------------------- vendor libraries


def nvml_module() -> ModuleType | None:
    """nvidia-ml-py's ``pynvml``, initialised, or None when NVML is not usable here.

    The library stays initialised for the life of the process (NVML counts inits), which also
    keeps the driver from tearing the GPUs down between runs.
    """
    try:
        import pynvml
    except Exception:  # not installed, or a broken install
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded / ...
        return None
    return pynvml


def amdsmi_module() -> ModuleType | None:
    """``amdsmi``, initialised, or None. Its import raises KeyError without ROCm, so any
    exception (not only ImportError) means "not available"."""
    try:
        amdsmi = importlib.import_module("amdsmi")
    except Exception:
        return None
    try:
        amdsmi.amdsmi_init()
    except Exception:
        return None
    return amdsmi


# --------------------------------------------------------------------------- counters


class EnergyCounter(Protocol):
    """A cumulative hardware energy counter over one or more devices."""

    name: EnergySource

    def read(self) -> tuple[float, ...]:
        """One raw reading per device; raises when the counter cannot be read."""
        ...

    def joules(self, before: Sequence[float], after: Sequence[float]) -> float:
        """Energy used between two readings, summed over devices."""
        ...


class NvidiaEnergyCounter:
    """NVML total energy (mJ since driver load), every GPU."""

    name: EnergySource = "nvidia"

    def __init__(self, nvml: ModuleType, handles: Sequence[Any]):
        self._nvml = nvml
        self._handles = list(handles)

    @classmethod
    def probe(cls) -> NvidiaEnergyCounter | None:
        nvml = nvml_module()
        if nvml is None:
            return None
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]
            counter = cls(nvml, handles)
            # Pre-Volta GPUs raise NotSupported here; a sum that skipped a GPU would
            # under-report, so then this source is not used at all.
            counter.read()
        except Exception:
            return None
        return counter if handles else None

    def read(self) -> tuple[float, ...]:
        return tuple(
            float(self._nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self._handles
        )

    def joules(self, before: Sequence[float], after: Sequence[float]) -> float:
        return sum(b - a for a, b in zip(before, after, strict=True)) / 1000.0


class AmdEnergyCounter:
    """AMD SMI energy accumulator (ticks x counter_resolution µJ), every GPU."""

    name: EnergySource = "amd"

    def __init__(self, amdsmi: ModuleType, handles: Sequence[Any]):
        self._amdsmi = amdsmi
        self._handles = list(handles)

    @classmethod
    def probe(cls) -> AmdEnergyCounter | None:
        amdsmi = amdsmi_module()
        if amdsmi is None:
            return None
        try:
            handles = list(amdsmi.amdsmi_get_processor_handles())
            counter = cls(amdsmi, handles)
            counter.read()
        except Exception:
            return None
        return counter if handles else None

    def read(self) -> tuple[float, ...]:
        values = []
        for h in self._handles:
            info = self._amdsmi.amdsmi_get_energy_count(h)
            # ROCm 6.1+ names the accumulator 'energy_accumulator'; older releases 'power'.
            ticks = info["energy_accumulator"] if "energy_accumulator" in info else info["power"]
            values.append(float(ticks) * float(info["counter_resolution"]))  # µJ
        return tuple(values)

    def joules(self, before: Sequence[float], after: Sequence[float]) -> float:
        return sum(b - a for a, b in zip(before, after, strict=True)) / 1e6


@dataclass(frozen=True)
class _RaplZone:
    path: Path
    max_range_uj: int


class RaplEnergyCounter:
    """Linux powercap RAPL, one zone per CPU package, wrap-around handled."""

    name: EnergySource = "rapl"

    def __init__(self, zones: Sequence[_RaplZone]):
        self._zones = list(zones)

    @classmethod
    def probe(cls, root: Path | str | None = None) -> RaplEnergyCounter | None:
        root = Path(root if root is not None else DEFAULT_RAPL_ROOT)
        try:
            candidates = sorted(p for p in root.iterdir() if _RAPL_ZONE.match(p.name))
        except OSError:
            return None
        zones: list[tuple[str, _RaplZone]] = []
        for path in candidates:
            try:
                name = _read_text(path / "name") if (path / "name").exists() else "package"
                max_range = int(_read_text(path / "max_energy_range_uj"))
                int(_read_text(path / "energy_uj"))  # unreadable without root on most kernels
            except (OSError, ValueError):
                continue
            zones.append((name, _RaplZone(path, max_range)))
        # Some laptops add a 'psys' (whole platform) zone that already contains the packages:
        # summing both would count the CPU twice.
        packages = [z for name, z in zones if name != "psys"]
        chosen = packages or [z for _, z in zones]
        return cls(chosen) if chosen else None

    def read(self) -> tuple[float, ...]:
        return tuple(float(int(_read_text(z.path / "energy_uj"))) for z in self._zones)

    def joules(self, before: Sequence[float], after: Sequence[float]) -> float:
        total = 0.0
        for zone, a, b in zip(self._zones, before, after, strict=True):
            # The counter wraps to 0 after max_energy_range_uj (one wrap per window at most:
            # at 100 W that is ~45 minutes on a typical 262 kJ range).
            total += b - a if b >= a else zone.max_range_uj - a + b
        return total / 1e6


def _read_text(path: Path) -> str:
    return path.read_text().strip()


def detect_energy_counter(rapl_root: Path | str | None = None) -> EnergyCounter | None:
    """The first usable counter (NVIDIA, AMD, RAPL), probed now; None when none is.
    `rapl_root` replaces /sys/class/powercap."""
    for probe in (NvidiaEnergyCounter.probe, AmdEnergyCounter.probe):
        counter = probe()
        if counter is not None:
            return counter
    return RaplEnergyCounter.probe(rapl_root)


@functools.cache
def _detected_counter() -> EnergyCounter | None:
    return detect_energy_counter()


def reset_energy_detection() -> None:
    """Forget the counter detected for this process (tests, or after a driver change)."""
    _detected_counter.cache_clear()


# --------------------------------------------------------------------------- meters


@runtime_checkable
class EnergyMeter(Protocol):
    """Measures the energy of one window: ``start()``, then ``stop()`` -> joules or None."""

    @property
    def source(self) -> EnergySource | None:
        """The counter it reads ("nvidia", "amd", "rapl"), None when nothing is measured."""
        ...

    def start(self) -> None: ...

    def stop(self) -> float | None: ...


class NullMeter:
    """No counter: every window is "not measured"."""

    source: EnergySource | None = None

    def start(self) -> None:
        pass

    def stop(self) -> float | None:
        return None


class CounterMeter:
    """An EnergyMeter over a cumulative counter: the difference of two readings."""

    def __init__(self, counter: EnergyCounter):
        self.counter = counter
        self._before: tuple[float, ...] | None = None

    @property
    def source(self) -> EnergySource | None:
        return self.counter.name

    def start(self) -> None:
        try:
            self._before = tuple(self.counter.read())
        except Exception:
            self._before = None

    def stop(self) -> float | None:
        before, self._before = self._before, None
        if before is None:
            return None
        try:
            joules = self.counter.joules(before, tuple(self.counter.read()))
        except Exception:
            return None
        # A counter that went backwards (driver reload) measured nothing we can trust.
        return joules if joules >= 0 else None


def new_energy_meter(counter: EnergyCounter | None = None) -> EnergyMeter:
    """A meter on `counter`, or on the counter detected for this process (probed once)."""
    counter = counter if counter is not None else _detected_counter()
    return NullMeter() if counter is None else CounterMeter(counter)


def measures_local_energy(backend: str, base_url: str = "") -> bool:
    """Whether this machine's counters see the model's work: not for cloud backends, nor for
    a server at a non-loopback address."""
    if backend in CLOUD_BACKENDS:
        return False
    if not base_url:
        return True
    host = urlsplit(base_url if "//" in base_url else f"//{base_url}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --------------------------------------------------------------------------- model calls


@dataclass(frozen=True)
class ModelCallStats:
    """One chat-model call, as timed by `ModelCallRecorder`."""

    latency_s: float
    """Wall-clock time of the call (prompt processing and generation)."""
    prompt_tokens: int | None = None
    """Input tokens the engine reported; None when it reported none."""
    completion_tokens: int | None = None
    """Output tokens the engine reported; None when it reported none."""
    error: str | None = None
    """The exception's type when the call failed."""

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens per second of the call; None without a token count."""
        if not self.completion_tokens or self.latency_s <= 0:
            return None
        return self.completion_tokens / self.latency_s


class ModelCallRecorder(BaseCallbackHandler):
    """A LangChain callback that times every chat-model call of a run and keeps its usage.

    Pass it in the run's ``config["callbacks"]``; every model call inside the graph inherits it.
    """

    run_inline = True  # time the call on the event loop, not in an executor

    def __init__(self) -> None:
        self.calls: list[ModelCallStats] = []
        self._started: dict[UUID, float] = {}
        self._lock = threading.Lock()

    def _start(self, run_id: UUID) -> None:
        with self._lock:
            self._started[run_id] = time.perf_counter()

    def _finish(self, run_id: UUID, **fields: Any) -> None:
        with self._lock:
            started = self._started.pop(run_id, None)
            if started is not None:
                self.calls.append(ModelCallStats(time.perf_counter() - started, **fields))

    def on_chat_model_start(
        self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._start(run_id)

    def on_llm_start(self, serialized: Any, prompts: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._start(run_id)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        prompt, completion = _usage(response)
        self._finish(run_id, prompt_tokens=prompt, completion_tokens=completion)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._finish(run_id, error=type(error).__name__)


def _usage(response: LLMResult) -> tuple[int | None, int | None]:
    prompt = completion = None
    for generations in response.generations:
        for gen in generations:
            usage = getattr(getattr(gen, "message", None), "usage_metadata", None)
            if usage:
                prompt = (prompt or 0) + int(usage.get("input_tokens", 0) or 0)
                completion = (completion or 0) + int(usage.get("output_tokens", 0) or 0)
    if prompt is None and completion is None:
        token_usage = (response.llm_output or {}).get("token_usage") or {}
        if token_usage:
            prompt = token_usage.get("prompt_tokens")
            completion = token_usage.get("completion_tokens")
    return prompt, completion


# --------------------------------------------------------------------------- one run


@dataclass
class RunTelemetry:
    """What one run measured."""

    latency_s: float
    """End-to-end wall-clock time."""
    energy_j: float | None = None
    """Joules over the run from `energy_source`; None = not measured."""
    energy_source: EnergySource | None = None
    """The counter `energy_j` came from; None whenever `energy_j` is None."""
    model_calls: list[ModelCallStats] = field(default_factory=list)
    """Every chat-model call of the run, in completion order."""

    @property
    def model_time_s(self) -> float:
        return sum(c.latency_s for c in self.model_calls)

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens per second of model time, over the calls that reported tokens;
        None when none did."""
        counted = [c for c in self.model_calls if c.completion_tokens]
        seconds = sum(c.latency_s for c in counted)
        if not counted or seconds <= 0:
            return None
        return sum(c.completion_tokens or 0 for c in counted) / seconds


_active_lock = threading.Lock()
_active_runs: set[RunMeter] = set()


class RunMeter:
    """Measures one run: wall time, model calls (through `recorder`) and energy.

    A device counter cannot tell two runs apart: when runs of this process overlap, each
    one's window holds the others' work too, so overlapping runs report energy as not
    measured (measure the whole batch instead, see `per_query`).
    """

    def __init__(self, energy: EnergyMeter | None = None, *, measure_energy: bool = True):
        self.energy: EnergyMeter = (
            (energy if energy is not None else new_energy_meter())
            if measure_energy
            else NullMeter()
        )
        self.recorder = ModelCallRecorder()
        self.overlapped = False
        self._started: float | None = None

    @classmethod
    def for_engine(
        cls, backend: str, base_url: str = "", energy: EnergyMeter | None = None
    ) -> RunMeter:
        return cls(energy, measure_energy=measures_local_energy(backend, base_url))

    def start(self) -> None:
        with _active_lock:
            if _active_runs:
                self.overlapped = True
                for other in _active_runs:
                    other.overlapped = True
            _active_runs.add(self)
        self._started = time.perf_counter()
        self.energy.start()

    def stop(self) -> RunTelemetry:
        joules = self.energy.stop()
        latency = time.perf_counter() - (self._started or time.perf_counter())
        with _active_lock:
            _active_runs.discard(self)
        if self.overlapped:
            joules = None
        return RunTelemetry(
            latency_s=latency,
            energy_j=joules,
            energy_source=self.energy.source if joules is not None else None,
            model_calls=list(self.recorder.calls),
        )


# --------------------------------------------------------------------------- dollars


def electricity_usd_per_kwh(environ: dict[str, str] | None = None) -> float:
    """The electricity price from HOMESPUN_ELECTRICITY_USD_PER_KWH (default 0.15 $/kWh)."""
    raw = (os.environ if environ is None else environ).get(ELECTRICITY_ENV, "").strip()
    if not raw:
        return DEFAULT_USD_PER_KWH
    try:
        price = float(raw)
    except ValueError:
        price = -1.0
    if not price >= 0 or price == float("inf"):
        raise ValueError(
            f"{ELECTRICITY_ENV} must be a price in USD per kWh (a number >= 0), got {raw!r}"
        )
    return price


def energy_cost_usd(energy_j: float | None, usd_per_kwh: float) -> float | None:
    """Electricity cost of `energy_j`; None when the energy was not measured."""
    return None if energy_j is None else energy_j / _J_PER_KWH * usd_per_kwh


def token_cost_usd(
    prompt_tokens: int, completion_tokens: int, price_per_mtok: tuple[float, float]
) -> float:
    """List-price cost of tokens at (input $, output $) per million tokens."""
    return (prompt_tokens * price_per_mtok[0] + completion_tokens * price_per_mtok[1]) / 1e6


def run_cost_usd(
    *,
    backend: str,
    prompt_tokens: int,
    completion_tokens: int,
    energy_j: float | None,
    price_per_mtok: tuple[float, float] | None,
    usd_per_kwh: float | None,
) -> float | None:
    """Dollar cost of a run: tokens x list price for a cloud backend (None when its price is
    unknown), measured energy x electricity price for a local one (None when either is
    unknown)."""
    if backend in CLOUD_BACKENDS:
        if price_per_mtok is None:
            return None
        return token_cost_usd(prompt_tokens, completion_tokens, price_per_mtok)
    return None if usd_per_kwh is None else energy_cost_usd(energy_j, usd_per_kwh)


def per_query(
    *,
    energy_j: Sequence[float | None],
    cost_usd: Sequence[float | None],
    fresh: Sequence[bool] | None = None,
    batch_energy_j: float | None = None,
    local: bool = True,
    usd_per_kwh: float = DEFAULT_USD_PER_KWH,
) -> tuple[float | None, float | None]:
    """(J/query, $/query) over a batch of runs; None where not measured.

    Energy is the mean of the runs' own measurements when every run has one. Otherwise, when
    the batch's fresh runs were measured together (`batch_energy_j`, e.g. runs that
    overlapped) and every reused run has its own measurement, it is their total over all runs.
    Cost is the mean of the runs' costs when all are known, else, for a local model, the
    energy per query at the electricity price.
    """
    n = len(energy_j)
    if n == 0:
        return None, None
    fresh = list(fresh) if fresh is not None else [True] * n
    joules: float | None = None
    if all(e is not None for e in energy_j):
        joules = sum(e for e in energy_j if e is not None) / n
    elif batch_energy_j is not None and any(fresh):
        reused = [e for e, f in zip(energy_j, fresh, strict=True) if not f]
        if all(e is not None for e in reused):
            joules = (batch_energy_j + sum(e for e in reused if e is not None)) / n
    if all(c is not None for c in cost_usd) and len(cost_usd) == n:
        dollars: float | None = sum(c for c in cost_usd if c is not None) / n
    elif local:
        dollars = energy_cost_usd(joules, usd_per_kwh)
    else:
        dollars = None
    return joules, dollars
