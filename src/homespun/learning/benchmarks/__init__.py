"""Benchmarks for the evaluation runner, one module each (`starter`, `agentdojo`).

Import the module you need: each may pull in heavy or optional dependencies, so nothing is
imported here.
"""
