"""Tests of the built-in connectors (notes, calendar, feeds, email)."""
