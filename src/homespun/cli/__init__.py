"""The `homespun` command: thin Typer verbs over the library, rendered with rich."""

from ._app import app

__all__ = ["app"]
