"""`homespun doctor`: what this install and this machine can do, and what to fix first."""

from __future__ import annotations

import platform
import sys
from importlib import metadata

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ._common import console, settings
from ._render import NOT_MEASURED

# The packages whose versions explain most "works here, not there" reports.
_PACKAGES = (
    "homespun",
    "langgraph",
    "langchain-core",
    "langchain-mcp-adapters",
    "fastmcp",
    "mcp",
    "pydantic",
    "xllamacpp",
    "nvidia-ml-py",
    "amdsmi",
)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _ok(flag: bool, yes: str, no: str) -> Text:
    return Text(yes, style="green") if flag else Text(no, style="yellow")


def _gb(n: int | None) -> str:
    return "unknown" if n is None else f"{n / 1024**3:.1f} GB"


def _install_rows(grid: Table) -> None:
    """Python, packages, HOMESPUN_HOME, spec, and whether the spec's model is pulled."""
    from homespun.engines.catalog import DEFAULT_MODEL, ModelNotAvailable, resolve_model_path
    from homespun.spec import SpecError, load_spec

    st = settings()
    grid.add_row("python", f"{platform.python_version()} ({escape(sys.executable)})")
    grid.add_row("platform", platform.platform())
    grid.add_row("packages", ", ".join(f"{p} {_version(p)}" for p in _PACKAGES))
    home = st.home.expanduser()
    grid.add_row(
        "HOMESPUN_HOME",
        Text.assemble(
            escape(str(home)) + " ",
            _ok(home.is_dir(), "(exists)", "(not created yet: run `homespun init`)"),
        ),
    )
    model_name, backend = DEFAULT_MODEL, "embedded"
    if not st.spec_path.exists():
        grid.add_row("spec", Text(f"none at {st.spec_path}: run `homespun init`", style="yellow"))
    else:
        try:
            spec = load_spec(st.spec_path)
        except SpecError as exc:
            grid.add_row("spec", Text(f"INVALID: {exc}", style="red"))
        else:
            grid.add_row(
                "spec",
                Text.assemble(
                    escape(str(st.spec_path)) + " ",
                    Text("valid", style="green"),
                    f" (hash {spec.content_hash()}, "
                    f"{spec.engine.backend}: {spec.intelligence.model})",
                ),
            )
            model_name, backend = spec.intelligence.model, spec.engine.backend
    if backend != "embedded":
        grid.add_row("model", f"{model_name} is served by the {backend} backend")
        return
    try:
        path = resolve_model_path(model_name, st.models_path)
    except ModelNotAvailable as exc:
        grid.add_row("model", Text(f"{model_name}: {exc}", style="yellow"))
    else:
        grid.add_row(
            "model", Text.assemble(f"{model_name} ", Text("pulled", style="green"), f" ({path})")
        )


def doctor() -> None:
    """Check the install and this machine: versions, spec, model, hardware, engines, energy."""
    from homespun.engines.hardware import detect_hardware
    from homespun.engines.telemetry import ELECTRICITY_ENV, electricity_usd_per_kwh

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column()
    _install_rows(grid)

    hw = detect_hardware()
    grid.add_row("cpu", f"{hw.cpu_cores} cores")
    grid.add_row(
        "memory", f"{_gb(hw.memory_bytes)} total, {_gb(hw.memory_available_bytes)} available"
    )
    if hw.gpus:
        for gpu in hw.gpus:
            grid.add_row("gpu", f"{gpu.vendor}: {gpu.name}, {_gb(gpu.memory_bytes)}")
    else:
        grid.add_row("gpu", "none found (NVML, AMD SMI)")
    if hw.energy_source is None:
        grid.add_row(
            "energy",
            Text(
                f"{NOT_MEASURED}: no NVIDIA, AMD or readable RAPL energy counter on this machine",
                style="yellow",
            ),
        )
    else:
        grid.add_row("energy", f"measured with the {hw.energy_source} counter")
    try:
        price = f"${electricity_usd_per_kwh():g}/kWh ({ELECTRICITY_ENV})"
    except ValueError as exc:
        price = f"[red]{escape(str(exc))}[/]"
    grid.add_row("electricity", price)
    console.print(grid)

    engines = Table(title="Engines")
    for col in ("engine", "usable", "detail"):
        engines.add_column(col)
    for e in hw.engines:
        engines.add_row(e.name, _ok(e.usable, "yes", "no"), escape(e.detail))
    console.print(engines)

    models = Table(title="Catalog models")
    for col in ("model", "needs", "fits", "notes"):
        models.add_column(col)
    for f in hw.models:
        where = [w for w, ok in (("cpu", f.fits_cpu), ("gpu", f.fits_gpu)) if ok]
        notes = "third-party repackaging: opt-in" if f.model.third_party else ""
        models.add_row(
            f.model.name, _gb(f.needs_bytes), _ok(f.fits, " + ".join(where) or "yes", "no"), notes
        )
    console.print(models)
    console.print(f"[bold]recommendation:[/] {escape(hw.recommendation)}")
