"""The report as a list of blocks (headings, text, tables, figures, code), and its two renderings:
one self-contained HTML file (figures as base64 PNG data URIs, inline CSS, nothing fetched), or
Markdown with the PNG files beside it."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2
    anchor: str | None = None


@dataclass
class Text:
    """A paragraph; `code` spans are written as `...` in Markdown and <code> in HTML."""

    text: str


@dataclass
class Cell:
    """A table cell: its text, and for a number the value(s) it shows (HTML data- attributes,
    so that a program can read the exact numbers back)."""

    text: str
    data: dict[str, object] = field(default_factory=dict)


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    kind: str = ""  # a class name in HTML (e.g. "comparison")
    row_keys: list[str] = field(default_factory=list)  # per row: data-config in HTML


@dataclass
class Figure:
    name: str  # file stem, unique in the report
    png: bytes
    caption: str
    alt: str


@dataclass
class Gallery:
    """Figures side by side in HTML (stacked in Markdown)."""

    figures: list[Figure]


@dataclass
class Code:
    text: str
    language: str = ""


@dataclass
class Details:
    """A section folded away in HTML (<details>, which GitHub's Markdown renders too)."""

    summary: str
    blocks: list


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232b;
max-width:1180px;margin:2em auto;padding:0 1.5em}
h1{font-size:1.9em;margin-bottom:.2em}h2{border-bottom:2px solid #d0d7de;padding-bottom:.2em;
margin-top:2.2em}h3{margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0 1em;font-size:13.5px}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#f3f5f7}tr:nth-child(even) td{background:#fafbfc}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.runs td{font-size:12.5px}
figure{margin:1em 0 1.6em}figure img{max-width:100%;border:1px solid #e5e8eb}
figcaption{color:#444;font-size:14px;max-width:900px;margin-top:.3em}
.gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:0 1.2em}
code,pre{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12.5px}
code{background:#f3f5f7;padding:.1em .3em;border-radius:3px}
pre{background:#f6f8fa;padding:.8em;white-space:pre-wrap;overflow-wrap:anywhere;border-radius:4px}
pre code{background:none;padding:0}
details{margin:.6em 0}summary{cursor:pointer;font-weight:600}
.toc{columns:2}.meta{color:#555}
"""


def _inline_html(text: str) -> str:
    """Escape, then turn `code` spans into <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(title: str, blocks: list) -> str:
    """One self-contained HTML page."""
    body = "\n".join(_html_block(b) for b in blocks)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"{body}\n</body>\n</html>\n"
    )


def _html_block(block) -> str:
    if isinstance(block, Heading):
        anchor = f' id="{html.escape(block.anchor)}"' if block.anchor else ""
        return f"<h{block.level}{anchor}>{_inline_html(block.text)}</h{block.level}>"
    if isinstance(block, Text):
        return f"<p>{_inline_html(block.text)}</p>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_inline_html(c)}</th>" for c in block.columns)
        rows = []
        for i, row in enumerate(block.rows):
            key = block.row_keys[i] if i < len(block.row_keys) else None
            attr = f' data-config="{html.escape(key)}"' if key is not None else ""
            cells = "".join(_html_cell(c) for c in row)
            rows.append(f"<tr{attr}>{cells}</tr>")
        kind = f' class="{block.kind}"' if block.kind else ""
        return f"<table{kind}>\n<tr>{head}</tr>\n" + "\n".join(rows) + "\n</table>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (
            f'<figure id="fig-{html.escape(block.name)}"><img alt="{html.escape(block.alt)}" '
            f'src="data:image/png;base64,{data}">\n'
            f"<figcaption>{_inline_html(block.caption)}</figcaption></figure>"
        )
    if isinstance(block, Gallery):
        return '<div class="gallery">' + "\n".join(map(_html_block, block.figures)) + "</div>"
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text)}</code></pre>"
    if isinstance(block, Details):
        inner = "\n".join(_html_block(b) for b in block.blocks)
        return f"<details><summary>{_inline_html(block.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"unknown block {block!r}")


def _html_cell(cell: Cell) -> str:
    attrs = "".join(f' data-{k}="{html.escape(_number(v))}"' for k, v in cell.data.items())
    kind = ' class="num"' if cell.data else ""
    return f"<td{kind}{attrs}>{_inline_html(cell.text)}</td>"


def _number(value: object) -> str:
    """repr of a float: it reads back to the same float."""
    return repr(float(value)) if isinstance(value, float) else str(value)


def to_markdown(blocks: list, files_dir: Path) -> tuple[str, dict[str, bytes]]:
    """The Markdown text, and {relative PNG path: bytes} for the figures it links."""
    pictures: dict[str, bytes] = {}
    text = "\n\n".join(_md_block(b, files_dir, pictures) for b in blocks)
    return text + "\n", pictures


def _md_block(block, files_dir: Path, pictures: dict[str, bytes]) -> str:
    if isinstance(block, Heading):
        return f"{'#' * block.level} {block.text}"
    if isinstance(block, Text):
        return block.text
    if isinstance(block, Table):

        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        lines = [
            "| " + " | ".join(cell(c) for c in block.columns) + " |",
            "|" + "---|" * len(block.columns),
        ]
        lines += ["| " + " | ".join(cell(c.text) for c in row) + " |" for row in block.rows]
        return "\n".join(lines)
    if isinstance(block, Figure):
        path = f"{files_dir.as_posix()}/{block.name}.png"
        pictures[path] = block.png
        return f"![{block.alt}]({path})\n\n*{block.caption}*"
    if isinstance(block, Gallery):
        return "\n\n".join(_md_block(f, files_dir, pictures) for f in block.figures)
    if isinstance(block, Code):
        return f"```{block.language}\n{block.text.rstrip()}\n```"
    if isinstance(block, Details):
        inner = "\n\n".join(_md_block(b, files_dir, pictures) for b in block.blocks)
        return f"<details><summary>{html.escape(block.summary)}</summary>\n\n{inner}\n\n</details>"
    raise TypeError(f"unknown block {block!r}")
