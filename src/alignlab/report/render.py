"""The report rendered twice from the same sections — Markdown and self-contained HTML — so the two
cannot drift apart.

Text copied from configs and data (run, method and parameter names and values, study.json, model
responses) reaches both renderings through the same escaping as the authored text: control characters
(ESC, NUL, BEL, bidirectional overrides) written as escapes (`alignlab.untrusted.displayable`), then
HTML-escaped in report.html, and in report.md HTML-escaped too (`<`, `>`, `&`), with backslashes and
table pipes backslash-escaped, line breaks made spaces and links kept only to http(s) targets
(`alignlab.untrusted.inert_links`), so a run named `<img src=x onerror=alert(1)>`, `a|b` or
`[x](javascript:alert(1))` shows as written and runs nothing.
"""

from __future__ import annotations

import base64
import html
import re

from alignlab.report.blocks import Cell, Plot, Section, Table, context_text
from alignlab.untrusted import displayable, inert_links


def _md_escape(text: str) -> str:
    """Text as report.md shows it: control characters as escapes, HTML-escaped, backslashes and table
    pipes escaped, on one line, with links only to http(s)."""
    escaped = html.escape(displayable(text), quote=False).replace("\\", "\\\\").replace("|", "\\|")
    return inert_links(escaped.replace("\r", " ").replace("\n", " "))


def _html_escape(text: str) -> str:
    """Text as report.html shows it: control characters as escapes, then HTML-escaped (so no link
    or markup can come from it)."""
    return html.escape(displayable(text))


def _md_cell(cell: Cell | str) -> str:
    cell = Cell(cell) if isinstance(cell, str) else cell
    return _md_escape(f"{cell.text} {cell.sub}" if cell.sub else cell.text)


def markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(map(_md_escape, table.header)) + " |", "|" + "---|" * len(table.header)]
    return "\n".join(lines + ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows])


def _html_cell(cell: Cell | str) -> str:
    cell = Cell(cell) if isinstance(cell, str) else cell
    css = f" class='{cell.css}'" if cell.css else ""
    sub = f"<br><span class=ci>{_html_escape(cell.sub)}</span>" if cell.sub else ""
    return f"<td{css}>{_html_escape(cell.text)}{sub}</td>"


def html_table(table: Table) -> str:
    head = "".join(f"<th>{_html_escape(c)}</th>" for c in table.header)
    body = "".join("<tr>" + "".join(map(_html_cell, row)) + "</tr>" for row in table.rows)
    return f"<div class=scroll><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def _html_text(text: str) -> str:
    """Paragraph text: escaped, with the Markdown *emphasis* the paragraphs use rendered as <em>."""
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", _html_escape(text))


def render_markdown(title: str, context: dict, sections: list[Section], numbers: dict[str, int]) -> str:
    out = [f"# {_md_escape(title)}",
           "\n".join(f"- **{_md_escape(str(k))}**: {_md_escape(context_text(v))}" for k, v in context.items()),
           "Contents: " + " · ".join(f"[{_md_escape(s.title)}](#{s.anchor})" for s in sections)]
    for section in sections:
        out.append(f'<a id="{section.anchor}"></a>\n\n## {_md_escape(section.title)}')
        for block in section.blocks:
            if isinstance(block, Table):
                out.append(markdown_table(block))
            elif isinstance(block, Plot):
                out.append(f"![{_md_escape(block.alt)}](figures/{block.file})\n\n"
                           f"*Figure {numbers[block.file]}. {_md_escape(block.caption)}*")
            else:
                out.append(_md_escape(block))
    return "\n\n".join(p for p in out if p) + "\n"


HTML_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1180px;margin:2rem auto;
padding:0 1rem;color:#1d232a;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2.4rem;border-bottom:1px solid #e3e6ea;padding-bottom:.3rem}
p{max-width:820px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:1rem 0;font-size:.88rem}
th,td{border:1px solid #d5d9de;padding:.35rem .6rem;text-align:right;vertical-align:top}
th{background:#f3f5f7;text-align:left;vertical-align:bottom}
td:first-child,th:first-child{text-align:left;font-weight:600;white-space:nowrap}
td.text{text-align:left;white-space:normal;min-width:11rem}
td.note{text-align:left;font-size:.78rem;color:#55606b;min-width:12rem;max-width:26rem}
td.name{text-align:left;white-space:nowrap}
td.response{text-align:left;white-space:pre-wrap;overflow-wrap:anywhere;min-width:18rem;max-width:46rem;
font-size:.82rem}
td.verdict{text-align:center;font-weight:600;white-space:nowrap}
td.confirmed{background:#dcf2e1;color:#19692c}td.reversed{background:#fbe1df;color:#a3241b}
td.inconclusive{background:#eceef1;color:#4f5963}td.not-tested{background:#fafbfc;color:#a4acb4;font-weight:400}
.ci{font-size:.78rem;color:#6b7580;white-space:nowrap}
figure{margin:1.2rem 0}figure img{max-width:100%;height:auto}
figcaption{font-size:.85rem;color:#55606b;max-width:760px}
.context{font-size:.85rem;color:#55606b}
nav.toc{font-size:.9rem;background:#f6f8fa;border:1px solid #e3e6ea;padding:.5rem 1rem;display:inline-block}
nav.toc ul{margin:.3rem 0;padding-left:1.2rem;list-style:none}
"""


def render_html(title: str, context: dict, sections: list[Section], numbers: dict[str, int]) -> str:
    context_html = "".join(f"<li><strong>{_html_escape(str(k))}</strong>: {_html_escape(context_text(v))}</li>"
                           for k, v in context.items())
    toc = "".join(f"<li><a href='#{s.anchor}'>{_html_escape(s.title)}</a></li>" for s in sections)
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_html_escape(title)}</title>"
             f"<style>{HTML_STYLE}</style></head><body><h1>{_html_escape(title)}</h1>"
             f"<ul class=context>{context_html}</ul><nav class=toc>Contents<ul>{toc}</ul></nav>"]
    for section in sections:
        parts.append(f"<h2 id='{section.anchor}'>{_html_escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                parts.append(html_table(block))
            elif isinstance(block, Plot):
                parts.append(f"<figure><img alt='{_html_escape(block.alt)}' src='data:image/png;base64,"
                             f"{base64.b64encode(block.png).decode()}'><figcaption>Figure {numbers[block.file]}. "
                             f"{_html_escape(block.caption)}</figcaption></figure>")
            else:
                parts.append(f"<p>{_html_text(block)}</p>")
    return "".join(parts) + "</body></html>\n"
