"""Trained adapters under HOMESPUN_HOME/adapters/, named by their content.

A spec names an adapter by path *and* sha256, so the file a spec points at must never
change: each adapter is stored once as ``<sha256>.gguf`` and never rewritten. Storing the
same file again returns the same path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["adapters_dir", "store_adapter"]

_GGUF_MAGIC = b"GGUF"


def adapters_dir(home: Path) -> Path:
    return Path(home).expanduser() / "adapters"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def store_adapter(gguf_lora: Path, home: Path) -> tuple[Path, str]:
    """Copy the GGUF LoRA at `gguf_lora` to ``home/adapters/<sha256>.gguf``; returns
    (absolute path, sha256). Idempotent: a file already stored is left as it is."""
    source = Path(gguf_lora).expanduser()
    with source.open("rb") as f:
        if f.read(4) != _GGUF_MAGIC:
            raise ValueError(f"{source} is not a GGUF file")
    digest = _sha256(source)
    directory = adapters_dir(home).resolve()
    target = directory / f"{digest}.gguf"
    if target.is_file() and _sha256(target) == digest:
        return target, digest
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{digest}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        shutil.copyfile(source, tmp)
        if _sha256(tmp) != digest:
            raise OSError(f"{source} changed while it was being stored")
        os.chmod(tmp, 0o444)  # a stored adapter is never edited in place
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target, digest
