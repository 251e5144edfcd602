"""Personal data sources (notes, calendar, feeds, email), each served as a read-only MCP server.

`registry.create_connector_server` builds one from its spec entry (`kind = "builtin"`,
`builtin = "notes" | "calendar" | "feeds" | "email"`, settings in `options`).
"""
