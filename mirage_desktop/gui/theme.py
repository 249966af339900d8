"""The dark theme: one palette and one style sheet, applied to the whole application."""

from __future__ import annotations

from PySide6.QtGui import QColor, QFont, QPalette
from PySide6.QtWidgets import QApplication

# Colours used by the custom-painted widgets too (plots, banner, preview).
BG = "#15171c"
PANEL = "#1d2027"
PANEL_2 = "#252932"
BORDER = "#30353f"
TEXT = "#e6e8ee"
MUTED = "#9aa1ad"
ACCENT = "#5b8cff"
GREEN = "#2fbf71"
YELLOW = "#e5b53a"
RED = "#e5534b"

# One colour per pipeline stage in the plots; "total" is always white.
STAGE_COLORS = {
    "total": "#f2f4f8",
    "detect": "#5b8cff",
    "embed": "#8f7cff",
    "track": "#38c5d8",
    "parse": "#b5e06a",
    "swap": "#f07aa8",
    "enhance": "#f0a35b",
    "worker": "#7fd27f",
    "output": "#c9c36a",
}
FALLBACK_COLORS = ["#6fd3c1", "#d98cf0", "#f5d76e", "#9ec1ff", "#ff9e80"]

LEVEL_COLORS = {"green": GREEN, "yellow": YELLOW, "red": RED}

STYLE_SHEET = f"""
QWidget {{ background: {BG}; color: {TEXT}; font-size: 10pt; }}
QMainWindow::separator {{ background: {BORDER}; width: 1px; height: 1px; }}
QToolTip {{ background: {PANEL_2}; color: {TEXT}; border: 1px solid {BORDER}; padding: 4px; }}
QFrame#Card, QGroupBox {{ background: {PANEL}; border: 1px solid {BORDER}; border-radius: 10px; }}
QGroupBox {{ margin-top: 14px; padding: 10px 8px 8px 8px; font-weight: 600; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 12px; top: 2px; padding: 0 4px; color: {MUTED};
                   background: transparent; }}
QLabel {{ background: transparent; }}
QLabel#Title {{ font-size: 13pt; font-weight: 700; }}
QLabel#Muted, QLabel[muted="true"] {{ color: {MUTED}; }}
QLabel#DropZone {{ border: 2px dashed {BORDER}; border-radius: 10px; color: {MUTED}; padding: 14px;
                   background: {PANEL_2}; }}
QLabel#DropZone[hover="true"] {{ border-color: {ACCENT}; color: {TEXT}; }}
QPushButton {{ background: {PANEL_2}; border: 1px solid {BORDER}; border-radius: 7px; padding: 6px 12px; }}
QPushButton:hover {{ border-color: {ACCENT}; }}
QPushButton:pressed {{ background: {BORDER}; }}
QPushButton:disabled {{ color: #5d636e; border-color: #262a31; }}
QPushButton:checked {{ background: {ACCENT}; border-color: {ACCENT}; color: white; }}
QPushButton#Primary {{ background: {ACCENT}; border-color: {ACCENT}; color: white; font-weight: 700;
                       padding: 7px 20px; }}
QPushButton#Primary:hover {{ background: #7aa2ff; }}
QPushButton#Danger {{ background: {RED}; border-color: {RED}; color: white; font-weight: 700;
                      padding: 7px 20px; }}
QPushButton#Small {{ padding: 3px 8px; border-radius: 6px; }}
QPushButton#Link {{ background: transparent; border: none; color: {ACCENT}; padding: 2px; }}
QComboBox, QSpinBox, QDoubleSpinBox, QLineEdit {{ background: {PANEL_2}; border: 1px solid {BORDER};
    border-radius: 6px; padding: 4px 6px; min-height: 20px; }}
QComboBox:hover, QSpinBox:hover, QLineEdit:focus {{ border-color: {ACCENT}; }}
QComboBox QAbstractItemView {{ background: {PANEL_2}; border: 1px solid {BORDER};
    selection-background-color: {ACCENT}; }}
QCheckBox {{ background: transparent; spacing: 8px; }}
QCheckBox::indicator {{ width: 30px; height: 16px; border-radius: 8px; background: #3a3f4a;
    border: 1px solid {BORDER}; }}
QCheckBox::indicator:checked {{ background: {ACCENT}; border-color: {ACCENT}; }}
QCheckBox::indicator:disabled {{ background: #2a2e36; }}
QSlider::groove:horizontal {{ height: 4px; background: #3a3f4a; border-radius: 2px; }}
QSlider::sub-page:horizontal {{ background: {ACCENT}; border-radius: 2px; }}
QSlider::handle:horizontal {{ background: white; width: 14px; height: 14px; margin: -5px 0;
    border-radius: 7px; }}
QProgressBar {{ background: {PANEL_2}; border: 1px solid {BORDER}; border-radius: 5px; text-align: center;
    min-height: 14px; max-height: 14px; font-size: 8pt; }}
QProgressBar::chunk {{ background: {ACCENT}; border-radius: 4px; }}
QTabWidget::pane {{ border: 1px solid {BORDER}; border-radius: 10px; background: {PANEL}; top: -1px; }}
QTabBar::tab {{ background: transparent; color: {MUTED}; padding: 7px 14px; border: none;
    border-bottom: 2px solid transparent; }}
QTabBar::tab:selected {{ color: {TEXT}; border-bottom: 2px solid {ACCENT}; }}
QTabWidget > QWidget {{ background: {PANEL}; }}
QListWidget, QTableWidget, QTextBrowser, QPlainTextEdit {{ background: {PANEL_2}; border: 1px solid {BORDER};
    border-radius: 8px; }}
QListWidget::item {{ border-radius: 8px; padding: 4px; }}
QListWidget::item:selected {{ background: #2e3a57; border: 1px solid {ACCENT}; }}
QHeaderView::section {{ background: {PANEL}; color: {MUTED}; border: none; border-bottom: 1px solid {BORDER};
    padding: 4px; }}
QTableWidget {{ gridline-color: {BORDER}; }}
QScrollArea {{ border: none; background: transparent; }}
QScrollArea > QWidget > QWidget {{ background: transparent; }}
QScrollBar:vertical {{ background: transparent; width: 10px; }}
QScrollBar::handle:vertical {{ background: #3a3f4a; border-radius: 5px; min-height: 24px; }}
QScrollBar::add-line, QScrollBar::sub-line {{ height: 0; width: 0; }}
QStatusBar {{ background: {PANEL}; border-top: 1px solid {BORDER}; color: {MUTED}; }}
QStatusBar QLabel {{ color: {MUTED}; padding: 0 8px; }}
QDialog {{ background: {PANEL}; }}
"""


def apply(app: QApplication) -> None:
    """Fusion style, a dark palette (for native bits the style sheet does not reach) and the sheet."""
    app.setStyle("Fusion")
    pal = QPalette()
    for role, color in [
        (QPalette.Window, BG), (QPalette.WindowText, TEXT), (QPalette.Base, PANEL_2),
        (QPalette.AlternateBase, PANEL), (QPalette.Text, TEXT), (QPalette.Button, PANEL_2),
        (QPalette.ButtonText, TEXT), (QPalette.Highlight, ACCENT), (QPalette.HighlightedText, "#ffffff"),
        (QPalette.ToolTipBase, PANEL_2), (QPalette.ToolTipText, TEXT), (QPalette.PlaceholderText, MUTED),
    ]:
        pal.setColor(role, QColor(color))
    app.setPalette(pal)
    font = QFont(app.font())
    if font.pointSizeF() < 9.5:
        font.setPointSizeF(9.5)
    app.setFont(font)
    app.setStyleSheet(STYLE_SHEET)


def stage_color(name: str, index: int = 0) -> QColor:
    return QColor(STAGE_COLORS.get(name, FALLBACK_COLORS[index % len(FALLBACK_COLORS)]))
