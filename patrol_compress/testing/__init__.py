"""Tiny models and helpers for tests (importable by users' own tests too)."""
