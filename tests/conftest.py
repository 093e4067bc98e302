"""Shared pytest fixtures live in tests/fixtures/ and are loaded here."""
