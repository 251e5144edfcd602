"""`python -m homespun.cli`: the `homespun` command without its console script (MCP clients
start the server this way, with an absolute interpreter path)."""

from homespun.cli import app

if __name__ == "__main__":
    app(prog_name="homespun")
