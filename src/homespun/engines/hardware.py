"""What this machine can run: CPU cores, memory, GPUs, which engines and catalog models fit.

Every probe is guarded: a missing library, driver or file means "none found", never an error.
GPUs come from NVML (nvidia-ml-py) or AMD SMI; the vendor libraries are the same ones the
energy telemetry uses.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .catalog import CATALOG, DEFAULT_MODEL, CatalogModel
from .telemetry import EnergySource, amdsmi_module, detect_energy_counter, nvml_module

__all__ = [
    "EngineFit",
    "GpuInfo",
    "HardwareReport",
    "ModelFit",
    "detect_gpus",
    "detect_hardware",
    "memory_bytes",
    "memory_needed_bytes",
    "ollama_available",
    "usable_cores",
]

GpuVendor = Literal["nvidia", "amd"]

OLLAMA_PORT = 11434
_GIB = 1024**3
# llama.cpp needs the weights plus its KV cache and scratch buffers: at the context lengths a
# personal assistant uses, ~20% of the weights and a fixed half GiB cover it.
_RUNTIME_FACTOR = 1.2
_RUNTIME_OVERHEAD = 512 * 1024**2


@dataclass(frozen=True)
class GpuInfo:
    vendor: GpuVendor
    name: str
    memory_bytes: int | None
    """Total device memory; None when the driver would not say."""


@dataclass(frozen=True)
class EngineFit:
    name: Literal["embedded", "ollama", "vllm"]
    usable: bool
    """Whether the engine can serve models on this machine now."""
    detail: str
    """Why, or what to do to use it."""


@dataclass(frozen=True)
class ModelFit:
    model: CatalogModel
    needs_bytes: int
    """Memory the model needs to run (weights plus runtime)."""
    fits_cpu: bool
    """Fits in system memory (the embedded engine runs on the CPU)."""
    fits_gpu: bool
    """Fits in the largest GPU's memory."""

    @property
    def fits(self) -> bool:
        return self.fits_cpu or self.fits_gpu


@dataclass(frozen=True)
class HardwareReport:
    cpu_cores: int
    """CPU cores this process may use."""
    memory_bytes: int | None
    """Total system memory; None when it could not be read."""
    memory_available_bytes: int | None
    """Memory available now (MemAvailable); None when unknown."""
    gpus: list[GpuInfo] = field(default_factory=list)
    energy_source: EnergySource | None = None
    """The energy counter telemetry will read; None = energy not measured here."""
    engines: list[EngineFit] = field(default_factory=list)
    models: list[ModelFit] = field(default_factory=list)
    recommendation: str = ""

    @property
    def has_cuda(self) -> bool:
        return any(g.vendor == "nvidia" for g in self.gpus)

    @property
    def gpu_vendor(self) -> GpuVendor | None:
        return self.gpus[0].vendor if self.gpus else None

    @property
    def gpu_memory_bytes(self) -> int | None:
        """The largest GPU's memory (a model is placed on one GPU)."""
        sizes = [g.memory_bytes for g in self.gpus if g.memory_bytes]
        return max(sizes) if sizes else None


# --------------------------------------------------------------------------- probes


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_bytes(meminfo: Path | str = "/proc/meminfo") -> tuple[int | None, int | None]:
    """(total, available) system memory in bytes, from /proc/meminfo or os.sysconf."""
    values: dict[str, int] = {}
    try:
        for line in Path(meminfo).read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                unit = 1024 if parts[1:2] == ["kB"] else 1
                values[key.strip()] = int(parts[0]) * unit
    except OSError:
        pass
    total = values.get("MemTotal")
    available = values.get("MemAvailable")
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, OSError, ValueError):
            total = None
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (AttributeError, OSError, ValueError):
            available = None
    return total, available


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _nvidia_gpus() -> list[GpuInfo]:
    nvml = nvml_module()
    if nvml is None:
        return []
    gpus = []
    try:
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            try:
                name = _text(nvml.nvmlDeviceGetName(handle))
            except Exception:
                name = f"NVIDIA GPU {i}"
            try:
                memory = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
            except Exception:
                memory = None
            gpus.append(GpuInfo("nvidia", name, memory))
    except Exception:
        return gpus
    return gpus


def _amd_gpus() -> list[GpuInfo]:
    amdsmi = amdsmi_module()
    if amdsmi is None:
        return []
    gpus = []
    try:
        for i, handle in enumerate(amdsmi.amdsmi_get_processor_handles()):
            name = f"AMD GPU {i}"
            try:
                name = _text(amdsmi.amdsmi_get_gpu_asic_info(handle)["market_name"]) or name
            except Exception:
                pass
            try:
                memory = int(
                    amdsmi.amdsmi_get_gpu_memory_total(handle, amdsmi.AmdSmiMemoryType.VRAM)
                )
            except Exception:
                memory = None
            gpus.append(GpuInfo("amd", name, memory))
    except Exception:
        pass
    # No amdsmi_shut_down: the energy counter of this process may be using the library.
    return gpus


def detect_gpus() -> list[GpuInfo]:
    """NVIDIA GPUs (NVML), else AMD GPUs (AMD SMI), else none."""
    return _nvidia_gpus() or _amd_gpus()


def ollama_available(port: int = OLLAMA_PORT, timeout_s: float = 0.2) -> tuple[bool, str]:
    """Whether ollama is installed (binary on PATH) or serving on loopback; and how we know."""
    serving = False
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            serving = True
    except OSError:
        pass
    binary = shutil.which("ollama")
    if serving:
        return True, f"serving on 127.0.0.1:{port}"
    if binary:
        return True, f"installed at {binary} (start it with `ollama serve`)"
    return False, f"not installed (https://ollama.com), nothing on 127.0.0.1:{port}"


def memory_needed_bytes(model: CatalogModel) -> int:
    return int(model.size_bytes * _RUNTIME_FACTOR) + _RUNTIME_OVERHEAD


# --------------------------------------------------------------------------- the report


def _engines(gpus: list[GpuInfo], ollama: tuple[bool, str]) -> list[EngineFit]:
    embedded_ok = importlib.util.find_spec("xllamacpp") is not None
    engines = [
        EngineFit(
            "embedded",
            embedded_ok,
            "llama.cpp in-process (xllamacpp), on the CPU"
            if embedded_ok
            else "xllamacpp is not installed: pip install xllamacpp",
        ),
        EngineFit("ollama", ollama[0], ollama[1]),
    ]
    if any(g.vendor == "nvidia" for g in gpus):
        installed = importlib.util.find_spec("vllm") is not None
        engines.append(
            EngineFit(
                "vllm",
                True,
                ("installed; " if installed else "pip install vllm; ")
                + "serve with `vllm serve MODEL` and set engine.backend = 'openai_compatible'",
            )
        )
    else:
        engines.append(EngineFit("vllm", False, "needs a CUDA (NVIDIA) GPU"))
    return engines


def _gb(n: int | None) -> str:
    return "?" if n is None else f"{n / _GIB:.1f} GB"


def _recommend(report: HardwareReport) -> str:
    fits_cpu = [f for f in report.models if f.fits_cpu]
    ollama = next(e for e in report.engines if e.name == "ollama")
    if report.has_cuda:
        gpu = next(g for g in report.gpus if g.vendor == "nvidia")
        text = (
            f"NVIDIA {gpu.name} ({_gb(gpu.memory_bytes)}): serve an open-weight model that "
            "fits its memory with vllm (engine.backend = 'openai_compatible')"
        )
        text += " or ollama (engine.backend = 'ollama')." if ollama.usable else "."
        return text + " The embedded engine runs on the CPU only."
    if report.gpus:
        gpu = report.gpus[0]
        text = f"AMD {gpu.name} ({_gb(gpu.memory_bytes)}): "
        if ollama.usable:
            return text + "use ollama's ROCm build (engine.backend = 'ollama')."
        return text + (
            "install ollama (it supports ROCm) and set engine.backend = 'ollama'; "
            "until then the embedded engine runs on the CPU."
        )
    if not fits_cpu:
        return (
            f"Only {_gb(report.memory_bytes)} of memory: even {DEFAULT_MODEL} may not fit; "
            "use a cloud backend (engine.backend = 'anthropic' or 'openai')."
        )
    # The 1.5B model is much better at tool calls but slow on very few cores.
    best = max(fits_cpu, key=lambda f: f.model.size_bytes)
    if best.model.name != DEFAULT_MODEL and report.cpu_cores >= 4:
        text = (
            f"CPU only ({report.cpu_cores} cores, {_gb(report.memory_bytes)}): the embedded "
            f"engine with {best.model.name} (better tool calls; `{best.model.pull_command}`)"
            f", or {DEFAULT_MODEL} for speed."
        )
    else:
        text = (
            f"CPU only ({report.cpu_cores} cores, {_gb(report.memory_bytes)}): the embedded "
            f"engine with {DEFAULT_MODEL} (the default)."
        )
        if best.model.name != DEFAULT_MODEL:
            text += (
                f" {best.model.name} fits too and calls tools better, but is slow on "
                f"{report.cpu_cores} cores."
            )
    if ollama.usable:
        text += " ollama is available for larger models (engine.backend = 'ollama')."
    return text


def detect_hardware(
    *,
    meminfo: Path | str = "/proc/meminfo",
    ollama_port: int = OLLAMA_PORT,
    gpus: list[GpuInfo] | None = None,
) -> HardwareReport:
    """Probe this machine (each probe guarded); `gpus` replaces GPU detection (tests)."""
    gpus = detect_gpus() if gpus is None else gpus
    total, available = memory_bytes(meminfo)
    counter = detect_energy_counter()
    largest_gpu = max((g.memory_bytes or 0 for g in gpus), default=0)
    models = [
        ModelFit(
            model=m,
            needs_bytes=memory_needed_bytes(m),
            fits_cpu=total is not None and memory_needed_bytes(m) <= total,
            fits_gpu=memory_needed_bytes(m) <= largest_gpu,
        )
        for m in CATALOG.values()
    ]
    report = HardwareReport(
        cpu_cores=usable_cores(),
        memory_bytes=total,
        memory_available_bytes=available,
        gpus=gpus,
        energy_source=counter.name if counter is not None else None,
        engines=_engines(gpus, ollama_available(ollama_port)),
        models=models,
    )
    return dataclasses.replace(report, recommendation=_recommend(report))
