"""Persistent state every layer shares: traces, the learning store, the eval cache, git
checkpoints and memory. `sqlite.py` is the one place that opens SQLite."""
