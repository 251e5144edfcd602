"""`homespun mcp`: serve the assistant over MCP, and install it into MCP clients."""

from __future__ import annotations

import enum
import json
from functools import partial
from pathlib import Path
from typing import Annotated

import typer

from ._common import console, current_spec, err_console, fail, settings

mcp_app = typer.Typer(
    help="Serve the assistant over MCP (stdio or HTTP), and install it into MCP clients.",
    no_args_is_help=True,
)


class Client(enum.StrEnum):
    claude_desktop = "claude-desktop"
    cursor = "cursor"
    vscode = "vscode"


_RESTART_HINT = {
    "claude-desktop": "Restart Claude Desktop to load it.",
    "cursor": "Cursor picks it up in Settings > MCP (reload the window if it does not).",
    "vscode": "VS Code lists it under 'MCP: List Servers' in this workspace.",
}


def parse_host_port(value: str) -> tuple[str, int]:
    """'HOST:PORT', '[::1]:PORT' or just 'PORT' (loopback)."""
    from homespun.channels.mcp_server import DEFAULT_HTTP_PORT

    value = value.strip()
    if value.isdigit():
        host, port_text = "127.0.0.1", value
    elif value.startswith("[") and "]" in value:
        host, _, rest = value[1:].partition("]")
        port_text = rest.removeprefix(":") or str(DEFAULT_HTTP_PORT)
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    elif ":" not in value:
        host, port_text = value, str(DEFAULT_HTTP_PORT)
    else:
        raise ValueError(
            f"--http {value!r}: write HOST:PORT, e.g. 127.0.0.1:8765 "
            "(bracket IPv6 hosts: [::1]:8765)"
        )
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"--http {value!r}: the port must be a number from 1 to 65535")
    return host or "127.0.0.1", int(port_text)


@mcp_app.command()
def serve(
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="HOST:PORT",
            help="Serve streamable HTTP here (bearer token required) instead of stdio.",
        ),
    ] = None,
    allow_remote: Annotated[
        bool,
        typer.Option(
            "--allow-remote", help="Allow a non-loopback HOST (plain HTTP: put TLS in front)."
        ),
    ] = False,
    show_token: Annotated[
        bool, typer.Option("--show-token", help="Also print the bearer token (HTTP only).")
    ] = False,
):
    """Serve the assistant as an MCP server: tools ask, search_memory, give_feedback.

    stdio by default (what Claude Desktop, Cursor and VS Code start; see `homespun mcp
    install`). Nothing but the protocol is written to stdout.
    """
    from homespun.channels.mcp_server import (
        HttpEndpoint,
        RemoteBindRefused,
        serve_http,
        serve_stdio,
    )

    st = settings()
    current_spec(st)  # a missing or invalid spec fails here, not on the first question
    if http is None:
        serve_stdio(st)
        return
    try:
        host, port = parse_host_port(http)
    except ValueError as exc:
        fail(str(exc))

    def announce(endpoint: HttpEndpoint) -> None:
        say = partial(err_console.print, highlight=False, soft_wrap=True)
        say(f"homespun MCP server at [bold]{endpoint.url}[/]")
        say(
            f"Clients must send 'Authorization: Bearer <token>'; the token is in "
            f"{endpoint.token_path} (mode 0600).",
            markup=False,
        )
        if show_token:
            token = endpoint.token_path.read_text(encoding="utf-8").strip()
            say(f"token: {token}", markup=False)
        if allow_remote:
            err_console.print(
                "[yellow]note:[/] listening beyond this machine over plain HTTP; "
                "the token travels unencrypted unless a TLS proxy is in front."
            )
        err_console.print("[dim]Ctrl-C stops it.[/]")

    try:
        serve_http(st, host, port, allow_remote=allow_remote, on_ready=announce)
    except RemoteBindRefused as exc:
        fail(str(exc))


@mcp_app.command()
def install(
    client: Annotated[Client, typer.Argument(help="The MCP client to configure.")],
    config: Annotated[
        Path | None,
        typer.Option("--config", help="The client's config file (default: its usual place)."),
    ] = None,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the resulting config; write nothing.")
    ] = False,
):
    """Add homespun to an MCP client's config (merged: other servers are kept; a .bak of the
    previous file is left next to it)."""
    from homespun.channels.mcp_clients import (
        ClientConfigError,
        default_config_path,
        install_entry,
    )

    st = settings()
    had_file = (config.expanduser() if config else default_config_path(client.value)).exists()
    extra_env = {}
    # The client starts us without the user's shell environment: carry explicit settings.
    if st.spec is not None:
        extra_env["HOMESPUN_SPEC"] = str(st.spec.expanduser().absolute())
    if st.models_dir is not None:
        extra_env["HOMESPUN_MODELS_DIR"] = str(st.models_dir.expanduser().absolute())
    try:
        path, document = install_entry(
            client.value,
            config_path=config,
            print_only=print_only,
            home=st.home,
            extra_env=extra_env,
        )
    except (ClientConfigError, OSError) as exc:
        fail(str(exc))
    if print_only:
        typer.echo(json.dumps(document, indent=2, ensure_ascii=False))
        err_console.print(
            f"[dim]would be written to {path}; nothing was written[/]",
            highlight=False,
            soft_wrap=True,
        )
        return
    say = partial(console.print, highlight=False, soft_wrap=True)
    say(f"Added the 'homespun' MCP server to [bold]{path}[/]")
    if had_file:
        say(f"[dim]previous file kept as {path.name}.bak[/]")
    if not st.spec_path.exists():
        err_console.print(
            f"[yellow]note:[/] no spec at {st.spec_path} yet; run "
            "`homespun init` before the client starts the server."
        )
    console.print(_RESTART_HINT[client.value])
