"""Presenters: text (terminal summary and JSON), html (self-contained reports), plots (matplotlib)."""
