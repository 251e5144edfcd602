"""HOMESPUN_HOME: create it, and load the spec it holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from homespun.spec import Settings, Spec, load_spec
from homespun.spec.defaults import DEFAULT_SPEC_MODEL, default_spec_text
from homespun.spec.io import atomic_write


@dataclass
class InitResult:
    spec_path: Path
    created_spec: bool
    created_repo: bool


def init_home(
    settings: Settings, *, force: bool = False, model: str = DEFAULT_SPEC_MODEL
) -> InitResult:
    """Create HOMESPUN_HOME with a commented default spec under git (the checkpoint repo).

    An existing spec is never overwritten unless `force` is given. `model` picks the model and,
    for a catalog model, the rendering settings measured best for it.
    """
    from homespun.mcp_servers.core import CORE_TOOL_DESCRIPTIONS

    home = settings.home.expanduser()
    for sub in ("workspace", "models", "logs", "learning"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    spec_path = settings.spec_path
    created_spec = False
    if force or not spec_path.exists():
        atomic_write(spec_path, default_spec_text(CORE_TOOL_DESCRIPTIONS, model))
        created_spec = True
    created_repo = False
    if spec_path.parent.resolve() == home.resolve():
        from homespun.stores.checkpoints import init_repo

        created_repo = not (home / ".git").exists()
        init_repo(home, spec_path)
    return InitResult(spec_path, created_spec, created_repo)


def load_current_spec(settings: Settings) -> Spec:
    return load_spec(settings.spec_path)
