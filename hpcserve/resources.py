"""Where the shipped templates and site configs live, installed or in a source checkout."""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent
_REPO = _PKG.parent


def _data_dir(name: str) -> Path:
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    return _REPO / name


def templates_dir() -> Path:
    """Directory of the Jinja2 templates (top-level ``templates/`` in the repo)."""
    return _data_dir("templates")


def site_configs_dir() -> Path:
    """Directory of the shipped site YAML files (top-level ``site_configs/``)."""
    return _data_dir("site_configs")
