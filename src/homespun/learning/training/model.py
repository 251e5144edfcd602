"""The base model for training: the runtime's own GGUF, opened by transformers.

transformers reads a GGUF directly and dequantizes it to float32 (SmolLM2-135M: ~25 s and
1.1 GB on 2 cores). The first load is saved with `save_pretrained` under
``cache_dir/<gguf sha256>/``, so later loads of the same file take well under a second.
A LoRA trained on these float32 weights applies to the quantized GGUF the engine runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["file_sha256", "load_base_model"]

_CACHE_FORMAT = 1  # bump when what a cache entry holds changes
_DIGESTS = "digests.json"  # "path|size|mtime_ns" -> sha256, so a 1 GB model is hashed once


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _cached_sha256(path: Path, cache_dir: Path) -> str:
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    index_path = cache_dir / _DIGESTS
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        index = {}
    digest = index.get(key)
    if not isinstance(digest, str):
        digest = file_sha256(path)
        index[key] = digest
        try:
            _write_atomic(index_path, json.dumps(index, indent=1))
        except OSError:
            pass  # only a cache
    return digest


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_base_model(gguf_path: Path, cache_dir: Path, *, threads: int) -> tuple[Any, Any]:
    """(model, tokenizer) of the GGUF at `gguf_path`, as a float32 transformers model.

    The model has no quantization config left (peft and optimizers treat it as a plain
    model). ``threads`` sets torch's intra-op threads of this process.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path).expanduser().resolve()
    cache_dir = Path(cache_dir).expanduser()
    if threads > 0:
        torch.set_num_threads(threads)
    _quiet_transformers()
    digest = _cached_sha256(gguf_path, cache_dir)
    entry = cache_dir / f"{digest}-v{_CACHE_FORMAT}"
    if (entry / "config.json").is_file():
        model = AutoModelForCausalLM.from_pretrained(entry, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(entry)
        return model, tokenizer

    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # The weights are already plain float32; the leftover GGUF "quantization" marks the
        # model as quantized, which peft and Trainer refuse to train.
        quantizer.remove_quantization_config(model)
    _save_entry(model, tokenizer, entry)
    return model, tokenizer


def _save_entry(model: Any, tokenizer: Any, entry: Path) -> None:
    """Save into a temporary sibling and rename, so a crash never leaves half an entry."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}."))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, entry)
        except OSError:  # another process filled the entry first: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
