"""The web page on the admin port: `ui_routes(context)` for the admin app to mount.

Imported lazily so that the terminal's report tables (shadowtrial.render, which share
analysis.ui.present's formatting) do not pull in starlette, jinja2 and the report's
numpy/scipy.
"""

from __future__ import annotations

from typing import Any


def ui_routes(context: Any) -> list[Any]:
    """`/ui/`, `/ui/candidates/{name}`, `/ui/watch` and `/ui/static/*` (see analysis.ui.routes)."""
    from analysis.ui.routes import ui_routes as build

    return build(context)


__all__ = ["ui_routes"]
