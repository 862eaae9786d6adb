"""How cxrlab's results show themselves in a notebook: small HTML pieces (a table, an inlined figure) that
the `_repr_html_` methods of LoadedData, Run, Evaluation and Explanation put together. Jupyter calls
`_repr_html_` itself; nothing here runs unless an object is displayed."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path


def table(header: list[str], rows: list[list], caption: str = "") -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption style='text-align:left'>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(fig, width: int | None = None) -> str:
    """A matplotlib Figure as an inlined PNG."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    return png(buffer.getvalue(), width)


def png(data: bytes, width: int | None = None) -> str:
    style = f" style='max-width:{width}px'" if width else " style='max-width:100%'"
    return f"<img{style} src='data:image/png;base64,{base64.b64encode(data).decode()}'>"


def png_file(path: Path, width: int | None = None) -> str:
    return png(Path(path).read_bytes(), width) if Path(path).exists() else ""


def heading(text: str, detail: str = "") -> str:
    extra = f" <span style='color:#667'>{html.escape(detail)}</span>" if detail else ""
    return f"<p><b>{html.escape(text)}</b>{extra}</p>"


def ci(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"
