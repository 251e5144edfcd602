"""Where homespun keeps its files (HOMESPUN_HOME) and which spec it uses (HOMESPUN_SPEC)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HOMESPUN_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".homespun")
    spec: Path | None = Field(None, description="Spec file; default HOMESPUN_HOME/spec.toml.")
    models_dir: Path | None = Field(None, description="GGUF models; default HOMESPUN_HOME/models.")

    @property
    def spec_path(self) -> Path:
        return (self.spec or self.home / "spec.toml").expanduser()

    @property
    def models_path(self) -> Path:
        return (self.models_dir or self.home / "models").expanduser()

    @property
    def workspace(self) -> Path:
        return self.home.expanduser() / "workspace"

    @property
    def traces_db(self) -> Path:
        return self.home.expanduser() / "traces.db"

    @property
    def threads_db(self) -> Path:
        return self.home.expanduser() / "threads.db"

    @property
    def memory_db(self) -> Path:
        return self.home.expanduser() / "memory.db"

    @property
    def logs_dir(self) -> Path:
        return self.home.expanduser() / "logs"

    @property
    def learning_dir(self) -> Path:
        return self.home.expanduser() / "learning"

    @property
    def learning_db(self) -> Path:
        """Sessions, proposals, per-cluster scores, costs and the eval cache."""
        return self.learning_dir / "learning.db"

    @property
    def search_db(self) -> Path:
        """Checkpoints of the search graph, so a killed session resumes where it stopped."""
        return self.learning_dir / "search.db"

    @property
    def sessions_dir(self) -> Path:
        """One folder per search session (diagnosis.md, plan.json)."""
        return self.learning_dir / "sessions"

    @property
    def benchmarks_dir(self) -> Path:
        """Versioned personal benchmarks (personal_vN.json) and their task data."""
        return self.learning_dir / "benchmarks"
