"""The checkpoint repository: spec.toml under git in HOMESPUN_HOME.

One commit per accepted proposal, with Session-ID / Edit-ID / Risk-Tier trailers. Rollback
makes revert commits; history is never rewritten. A spec file with uncommitted manual
changes stops a session: the search must not build on, or overwrite, edits it cannot see.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import git

from homespun.spec import Spec, load_spec, save_spec

_AUTHOR = git.Actor("homespun", "homespun@localhost")


class DirtySpec(RuntimeError):
    pass


class CheckpointError(RuntimeError):
    pass


@dataclass(frozen=True)
class SpecCommit:
    sha: str
    message: str
    trailers: dict[str, str]


def _trailers(message: str) -> dict[str, str]:
    out = {}
    for line in message.strip().splitlines():
        if ": " in line and line.split(": ", 1)[0] in (
            "Session-ID",
            "Edit-ID",
            "Risk-Tier",
            "Reverts-Edit-ID",
            "Target-Cluster",
            "Adapter-SHA256",
        ):
            key, value = line.split(": ", 1)
            out[key] = value.strip()
    return out


class CheckpointRepo:
    def __init__(self, home: Path, spec_path: Path):
        self.home = Path(home)
        self.spec_path = Path(spec_path)
        if self.spec_path.parent.resolve() != self.home.resolve():
            raise CheckpointError(
                f"spec search needs the spec inside HOMESPUN_HOME ({self.home}); "
                f"HOMESPUN_SPEC points at {self.spec_path}"
            )
        self.rel = self.spec_path.name
        if not (self.home / ".git").exists():
            raise CheckpointError(
                f"{self.home} has no checkpoint repository: run "
                "`homespun learning init` (or `homespun init`)"
            )
        self.repo = git.Repo(self.home)

    # ------------------------------------------------------------------ state

    def ensure_clean(self) -> None:
        """A session may only start from a committed spec."""
        if (
            self.rel
            not in [i.a_path for i in self.repo.index.diff(None)]
            + [
                i.a_path
                for i in (self.repo.index.diff("HEAD") if self.repo.head.is_valid() else [])
            ]
            and self.rel not in self.repo.untracked_files
        ):
            return
        raise DirtySpec(
            f"{self.spec_path} has changes that are not committed: commit or revert manual "
            f"changes first (git -C {self.home} commit -am 'manual edit' or "
            f"git -C {self.home} checkout -- {self.rel})"
        )

    def head_spec(self) -> Spec:
        return load_spec(self.spec_path)

    def file_matches_head(self) -> bool:
        try:
            blob = self.repo.head.commit.tree / self.rel
        except (KeyError, ValueError):
            return False
        return blob.data_stream.read().decode() == self.spec_path.read_text()

    # ------------------------------------------------------------------ commits

    def commits(self, limit: int = 200) -> list[SpecCommit]:
        if not self.repo.head.is_valid():
            return []
        return [
            SpecCommit(c.hexsha, c.message, _trailers(c.message))
            for c in self.repo.iter_commits(max_count=limit)
        ]

    def find_edit(self, edit_id: str) -> SpecCommit | None:
        for c in self.commits():
            if c.trailers.get("Edit-ID") == edit_id:
                return c
        return None

    def commit_spec(
        self,
        spec: Spec,
        *,
        subject: str,
        body: str,
        session_id: str,
        edit_id: str,
        tier: str,
        target: str,
        extra_trailers: dict[str, str] | None = None,
    ) -> str:
        """Write `spec` and commit it; idempotent per Edit-ID (a resumed session that
        already committed this edit gets the existing sha back)."""
        existing = self.find_edit(edit_id)
        if existing is not None:
            return existing.sha
        save_spec(spec, self.spec_path)
        self.repo.index.add([self.rel])
        message = (
            f"{subject}\n\n{body.strip()}\n\nSession-ID: {session_id}\n"
            f"Edit-ID: {edit_id}\nRisk-Tier: {tier}\nTarget-Cluster: {target}\n"
        )
        for key, value in (extra_trailers or {}).items():
            message += f"{key}: {value}\n"
        commit = self.repo.index.commit(message, author=_AUTHOR, committer=_AUTHOR)
        return commit.hexsha

    def revert(self, sha: str) -> str:
        """A revert commit that undoes `sha`; the spec file follows."""
        target = self.repo.commit(sha)
        edit_id = _trailers(target.message).get("Edit-ID", "")
        already = [c for c in self.commits() if c.trailers.get("Reverts-Edit-ID") == edit_id]
        if edit_id and already:
            raise CheckpointError(f"edit {edit_id} was already rolled back ({already[0].sha[:10]})")
        self.repo.git.revert(sha, no_edit=True, no_commit=True)
        message = (
            f'Revert "{target.summary}"\n\nThis reverts commit {sha}.\n\n'
            f"Reverts-Edit-ID: {edit_id}\n"
        )
        commit = self.repo.index.commit(message, author=_AUTHOR, committer=_AUTHOR)
        load_spec(self.spec_path)  # the reverted file must still be a valid spec
        return commit.hexsha

    def last_edit(self) -> SpecCommit | None:
        """The newest accepted edit that has not been rolled back."""
        reverted = {c.trailers.get("Reverts-Edit-ID") for c in self.commits()}
        for c in self.commits():
            if "Edit-ID" in c.trailers and c.trailers["Edit-ID"] not in reverted:
                return c
        return None


def init_repo(home: Path, spec_path: Path) -> None:
    """Create the checkpoint repo if missing and commit the current spec."""
    home.mkdir(parents=True, exist_ok=True)
    repo = git.Repo(home) if (home / ".git").exists() else git.Repo.init(home)
    ignore = home / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n!spec.toml\n!.gitignore\n")
    paths = [".gitignore"] + ([spec_path.name] if spec_path.exists() else [])
    repo.index.add(paths)
    if not repo.head.is_valid() or repo.index.diff("HEAD"):
        repo.index.commit(
            "Initial spec (homespun learning init)", author=_AUTHOR, committer=_AUTHOR
        )
