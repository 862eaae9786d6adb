"""One self-contained HTML report per run."""

from .html import write_report

__all__ = ["write_report"]
