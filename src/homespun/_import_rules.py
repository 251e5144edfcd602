"""An import-linter contract type: no module imports another package's private names.

A name or module that starts with one underscore is an implementation detail of the package
that holds it (`homespun.cli._render`, `homespun.engines.tool_calls._dumps`). Inside its own
package anything goes; from another package it must be imported by a public name, so that a
package can change its insides without breaking code it never knew about. import-linter has no
built-in contract for this, so this module adds one (configured in pyproject.toml as type
`no_private`). Only `lint-imports` imports this module; nothing in homespun does.

"Package" means the first two parts of a dotted name (`homespun.learning`), so the subpackages
of learning share its private names, and a top-level module (`homespun.home`) is its own.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from importlinter import Contract, ContractCheck, output


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _resolve(importer: str, is_package: bool, level: int, module: str | None) -> str:
    """The absolute module a `from ... import` names, relative levels resolved."""
    if not level:
        return module or ""
    base = importer.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def private_imports(modules: list[str], root: str) -> list[tuple[str, int, str]]:
    """(importer, line, what) for every cross-package import of a private name."""
    found: list[tuple[str, int, str]] = []
    for importer in sorted(modules):
        spec = importlib.util.find_spec(importer)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        is_package = Path(spec.origin).name == "__init__.py"
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"), spec.origin)
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(importer, is_package, node.level, node.module)
                targets = [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if not target.startswith(root + ".") or _package(target) == _package(importer):
                    continue
                if any(_is_private(part) for part in target.split(".")[1:]):
                    found.append((importer, node.lineno, target))
    return found


class PrivateImportsContract(Contract):
    def check(self, graph, verbose: bool) -> ContractCheck:
        roots = {m.split(".")[0] for m in graph.modules}
        found: list[tuple[str, int, str]] = []
        for root in sorted(roots):
            found += private_imports([m for m in graph.modules if m.split(".")[0] == root], root)
        return ContractCheck(kept=not found, metadata={"found": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for importer, line, target in check.metadata["found"]:
            output.print_error(f"{importer}:{line} imports private {target}", bold=False)
            output.new_line()
