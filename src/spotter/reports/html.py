"""One self-contained HTML page per report: inline CSS, images embedded as base64 PNGs, no scripts, no CDN."""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232b; margin: 0;
       background: #f5f6f8; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 10px; }
.sub { color: #5b6673; margin: 0 0 20px; }
section { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 16px 20px; margin: 16px 0; }
section p { margin: 6px 0 10px; }
img { max-width: 100%; height: auto; display: block; margin: 8px 0; }
.row { display: flex; gap: 16px; align-items: flex-start; }
.row img { min-width: 0; max-width: calc(50% - 8px); }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
th, td { border-bottom: 1px solid #e4e7eb; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.facts { display: flex; flex-wrap: wrap; gap: 10px; margin: 6px 0 8px; }
.fact { background: #f0f4fa; border-radius: 6px; padding: 6px 12px; }
.fact b { display: block; font-size: 20px; }
.note { color: #5b6673; font-size: 13px; }
"""


@dataclass
class Section:
    title: str
    parts: list[str] = field(default_factory=list)

    def text(self, words: str) -> "Section":
        self.parts.append(f"<p>{html.escape(words)}</p>")
        return self

    def note(self, words: str) -> "Section":
        self.parts.append(f'<p class="note">{html.escape(words)}</p>')
        return self

    def facts(self, items: dict[str, object]) -> "Section":
        """Headline numbers as small cards: {label: value}."""
        cards = "".join(f'<div class="fact"><b>{html.escape(_fmt(v))}</b>{html.escape(k)}</div>'
                        for k, v in items.items())
        self.parts.append(f'<div class="facts">{cards}</div>')
        return self

    def image(self, png: bytes, alt: str) -> "Section":
        data = base64.b64encode(png).decode("ascii")
        self.parts.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">')
        return self

    def images(self, *items: tuple[bytes, str]) -> "Section":
        """Pictures side by side: (png, alt) each."""
        self.parts.append('<div class="row">')
        for png, alt in items:
            self.image(png, alt)
        self.parts.append("</div>")
        return self

    def table(self, df: pd.DataFrame, empty: str = "none") -> "Section":
        if df.empty:
            return self.note(empty)
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
        rows = []
        for _, row in df.iterrows():
            cells = "".join(
                f'<td class="num">{html.escape(_fmt(v))}</td>' if _is_number(v) else f"<td>{html.escape(_fmt(v))}</td>"
                for v in row)
            rows.append(f"<tr>{cells}</tr>")
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
        return self


@dataclass
class Page:
    title: str
    subtitle: str = ""
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]

    def render(self) -> str:
        body = "".join(f"<section><h2>{html.escape(s.title)}</h2>{''.join(s.parts)}</section>" for s in self.sections)
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head>"
                f"<body><main><h1>{html.escape(self.title)}</h1><p class=\"sub\">{html.escape(self.subtitle)}</p>"
                f"{body}</main></body></html>\n")


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _fmt(v: object) -> str:
    if isinstance(v, (float, np.floating)):
        if np.isnan(v):
            return "n/a"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}" if abs(v) >= 1 or v == 0 else f"{v:.3f}"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def write_report(out_dir: Path, page: Page, pictures: dict[str, bytes], numbers: dict) -> Path:
    """Write `report.html`, one PNG per picture and `report.json` (the numbers) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, png in pictures.items():
        (out_dir / name).write_bytes(png)
    (out_dir / "report.json").write_text(json.dumps(_plain(numbers), indent=2, allow_nan=False))
    path = out_dir / "report.html"
    path.write_text(page.render(), encoding="utf-8")
    return path


def _plain(v: object):
    """Numbers as JSON has them: numpy scalars and arrays to Python, NaN to null (strict JSON has no NaN)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if np.isnan(v) else float(v)
    return v
