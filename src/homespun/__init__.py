"""homespun: a personal AI assistant whose whole configuration is one typed spec, improved by
LLM-guided spec search.

Layers, lowest first; each imports only the ones before it (ARCHITECTURE.md, checked by
`lint-imports`): spec <- engines <- stores <- connectors <- mcp_servers <- home <-
graphs.assistant <- graphs.runner <- learning <- graphs.search <- graphs.search_loop <-
surfaces (channels, graphs.studio, cli).
"""
