"""The QApplication with the theme: one place, used by the window command and the screenshot mode."""

from __future__ import annotations


def create_app(argv: list[str] | None = None):
    """The QApplication with the theme (reused if one exists, e.g. under pytest-qt)."""
    import sys

    from PySide6.QtWidgets import QApplication

    from . import theme

    app = QApplication.instance() or QApplication(argv if argv is not None else sys.argv[:1])
    app.setApplicationName("Mirage")
    app.setOrganizationName("Mirage Desktop")
    theme.apply(app)
    return app
