"""The web page on the admin port: `ui_routes(context)` for the admin app to mount."""

from __future__ import annotations

from analysis.ui.routes import ui_routes

__all__ = ["ui_routes"]
