"""Hardware detection and `homespun doctor`: what a user learns about their machine."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pynvml
import pytest
import typer
from typer.testing import CliRunner

from homespun.engines import telemetry
from homespun.engines.catalog import CATALOG
from homespun.engines.hardware import (
    GpuInfo,
    detect_gpus,
    detect_hardware,
    memory_bytes,
    memory_needed_bytes,
    ollama_available,
)

from .test_telemetry import FakeGpus

runner = CliRunner()
GIB = 1024**3


@pytest.fixture(autouse=True)
def no_vendor_hardware(monkeypatch, tmp_path):
    """Whatever this machine has, tests start from 'no GPU, no energy counter, no ollama'."""

    def no_nvml():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlInit", no_nvml)
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # import fails
    monkeypatch.setattr(telemetry, "DEFAULT_RAPL_ROOT", tmp_path / "no-powercap")
    empty_bin = tmp_path / "empty-bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    telemetry.reset_energy_detection()
    yield
    telemetry.reset_energy_detection()


def meminfo(tmp_path: Path, total_kb: int, available_kb: int | None = None) -> Path:
    path = tmp_path / "meminfo"
    lines = [f"MemTotal:       {total_kb} kB", "MemFree:        1000 kB"]
    if available_kb is not None:
        lines.append(f"MemAvailable:   {available_kb} kB")
    path.write_text("\n".join(lines) + "\n")
    return path


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_memory_from_proc_meminfo_or_sysconf(tmp_path):
    assert memory_bytes(meminfo(tmp_path, 16 * 1024**2, 8 * 1024**2)) == (16 * GIB, 8 * GIB)
    total, _ = memory_bytes(tmp_path / "missing")
    assert total == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def test_cpu_only_machine(tmp_path):
    report = detect_hardware(meminfo=meminfo(tmp_path, 8 * 1024**2), ollama_port=closed_port())
    assert report.gpus == [] and report.gpu_vendor is None and not report.has_cuda
    assert report.energy_source is None  # energy not measured here
    assert report.cpu_cores >= 1 and report.memory_bytes == 8 * GIB
    engines = {e.name: e for e in report.engines}
    assert engines["embedded"].usable  # xllamacpp is a dependency
    assert not engines["vllm"].usable and "CUDA" in engines["vllm"].detail
    assert not engines["ollama"].usable
    assert all(f.fits_cpu and not f.fits_gpu for f in report.models)
    assert "CPU only" in report.recommendation and "smollm2-135m" in report.recommendation


def test_models_that_do_not_fit_small_memory(tmp_path):
    small = CATALOG["smollm2-135m"]
    big = CATALOG["qwen2.5-coder-1.5b"]
    total_kb = (memory_needed_bytes(small) + 10 * 1024**2) // 1024  # room for the small one
    report = detect_hardware(meminfo=meminfo(tmp_path, total_kb), ollama_port=closed_port())
    fits = {f.model.name: f.fits for f in report.models}
    assert fits == {small.name: True, big.name: False}
    tiny = detect_hardware(meminfo=meminfo(tmp_path, 100 * 1024), ollama_port=closed_port())
    assert not any(f.fits for f in tiny.models)
    assert "cloud backend" in tiny.recommendation


def test_nvidia_gpus_from_nvml(monkeypatch, tmp_path):
    FakeGpus(monkeypatch)
    gpus = detect_gpus()
    assert gpus == [
        GpuInfo("nvidia", "NVIDIA H100 #0", 80 * GIB),
        GpuInfo("nvidia", "NVIDIA H100 #1", 80 * GIB),
    ]
    report = detect_hardware(meminfo=meminfo(tmp_path, 64 * 1024**2), ollama_port=closed_port())
    assert report.has_cuda and report.gpu_memory_bytes == 80 * GIB
    assert report.energy_source == "nvidia"
    assert {e.name: e.usable for e in report.engines}["vllm"]
    assert all(f.fits_gpu for f in report.models)
    assert "vllm" in report.recommendation and "openai_compatible" in report.recommendation


def test_amd_gpus_from_amdsmi_and_no_vllm(monkeypatch, tmp_path):
    amdsmi = type(sys)("amdsmi")
    amdsmi.amdsmi_init = lambda: None
    amdsmi.amdsmi_get_processor_handles = lambda: ["h0"]
    amdsmi.amdsmi_get_gpu_asic_info = lambda h: {"market_name": "Radeon RX 9070 XT"}
    amdsmi.AmdSmiMemoryType = type("T", (), {"VRAM": 0})
    amdsmi.amdsmi_get_gpu_memory_total = lambda h, kind: 16 * GIB
    amdsmi.amdsmi_get_energy_count = lambda h: {"energy_accumulator": 5, "counter_resolution": 1}
    monkeypatch.setitem(sys.modules, "amdsmi", amdsmi)
    report = detect_hardware(meminfo=meminfo(tmp_path, 32 * 1024**2), ollama_port=closed_port())
    assert report.gpus == [GpuInfo("amd", "Radeon RX 9070 XT", 16 * GIB)]
    assert report.energy_source == "amd"
    assert not {e.name: e.usable for e in report.engines}["vllm"]
    assert "ollama" in report.recommendation and "ROCm" in report.recommendation


def test_amdsmi_keyerror_means_no_amd_gpu(monkeypatch, tmp_path):
    pkg = tmp_path / "amdsmi"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import os\nos.environ['ROCM_PATH_NOT_SET_X']\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "amdsmi")
    assert detect_gpus() == []


def test_ollama_found_by_its_port_or_its_binary(monkeypatch, tmp_path):
    port = closed_port()
    assert ollama_available(port)[0] is False
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        usable, detail = ollama_available(server.getsockname()[1])
    assert usable and "serving on 127.0.0.1" in detail
    binary = Path(os.environ["PATH"]) / "ollama"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    usable, detail = ollama_available(port)
    assert usable and "installed" in detail and "ollama serve" in detail
    report = detect_hardware(meminfo=meminfo(tmp_path, 8 * 1024**2), ollama_port=port)
    assert "ollama is available" in report.recommendation


# --------------------------------------------------------------------------- doctor


def doctor_app() -> typer.Typer:
    from homespun.cli._doctor import doctor

    app = typer.Typer()
    app.command()(doctor)
    return app


def run_doctor():
    return runner.invoke(doctor_app(), [], env={"COLUMNS": "200"})


def test_doctor_on_a_fresh_machine(home, monkeypatch, tmp_path):
    monkeypatch.setenv("HOMESPUN_MODELS_DIR", str(tmp_path / "models"))
    res = run_doctor()
    assert res.exit_code == 0, res.output
    out = res.output
    assert "python" in out and sys.version.split()[0] in out
    assert "langgraph" in out and "nvidia-ml-py" in out
    assert str(home) in out and "homespun init" in out
    assert "not pulled yet" in out and "homespun models pull smollm2-135m" in out
    assert "energy" in out and "not measured" in out
    assert "none found" in out  # no GPU
    assert "vllm" in out and "needs a CUDA" in out
    assert "recommendation:" in out and "embedded engine" in out


def test_doctor_with_a_valid_spec_a_pulled_model_and_a_gpu(settings, monkeypatch, tmp_path):
    from homespun.spec import Spec, save_spec

    save_spec(Spec(), settings.spec_path)
    models = tmp_path / "models"
    models.mkdir()
    model = CATALOG["smollm2-135m"]
    with (models / model.filename).open("wb") as f:  # sized like the real file (sparse)
        f.truncate(model.size_bytes)
    monkeypatch.setenv("HOMESPUN_MODELS_DIR", str(models))
    FakeGpus(monkeypatch)
    res = run_doctor()
    assert res.exit_code == 0, res.output
    out = res.output
    assert "valid" in out and "INVALID" not in out
    assert "smollm2-135m pulled" in out
    assert "nvidia: NVIDIA H100 #0, 80.0 GB" in out
    assert "measured with the nvidia counter" in out
    assert "vllm" in out and "openai_compatible" in out


def test_doctor_names_an_invalid_spec(home, monkeypatch):
    home.mkdir(parents=True)
    (home / "spec.toml").write_text("[intelligence]\ntemperature = 'hot'\n")
    monkeypatch.setenv("HOMESPUN_ELECTRICITY_USD_PER_KWH", "free")
    res = run_doctor()
    assert res.exit_code == 0, res.output
    assert "INVALID" in res.output and "intelligence.temperature" in res.output
    assert "HOMESPUN_ELECTRICITY_USD_PER_KWH must be" in res.output
