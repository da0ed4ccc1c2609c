"""CLI commands for the text area (registered on the shared app)."""

from __future__ import annotations

from nestemb.cli.app import app  # noqa: F401
