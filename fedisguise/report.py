"""A comparison grid as one self-contained report.html, to open from the results folder.

table.md stays the one source of the tables: it is rendered with Python-Markdown, and every
picture it links (the plots, the level grid) is embedded as a data URI, so the file opens
anywhere, alone. Below it, per cell, its attack grids (original | disguised | reconstructed)
and its resolved config. Nothing is fetched from a network; nothing holds key material (a
config names key files at most, never their contents).
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import markdown

from fedisguise.faults import describe

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; }
th { background: #f3f3f3; position: sticky; top: 0; }
.scroll { overflow-x: auto; }
img { max-width: 100%; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; font-size: 0.8em; }
details { margin: 0.3em 0; }
"""
# After load, the page says how many of its pictures are shown (read by the tests).
SHOWN = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.imagesShown = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = images.length;
  document.body.dataset.tables = document.querySelectorAll("table").length;
});
</script>"""


def data_uri(path: Path) -> str:
    """A PNG as a data URI."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def embed_images(text: str, folder: Path) -> str:
    """Every <img src="relative.png"> that exists under `folder` becomes a data URI; one that
    does not is left out with a note, never a broken link."""
    def replace(match: re.Match) -> str:
        src = html.unescape(match.group(2))
        if src.startswith("data:"):
            return match.group(0)
        path = (folder / src).resolve()
        if not path.is_file() or folder.resolve() not in path.parents:
            return f"<em>(picture {html.escape(src)} not on disk)</em>"
        return f'{match.group(1)}"{data_uri(path)}"{match.group(3)}'
    return re.sub(r'(<img[^>]*\bsrc=)"([^"]+)"([^>]*>)', replace, text)


def _cell_section(name: str, run_dir: Path, config: dict[str, Any]) -> str:
    grids = sorted((run_dir / "images").glob("attack-*.png")) if run_dir.is_dir() else []
    parts = [f"<details><summary>{html.escape(name)}"
             f" ({len(grids)} attack grid{'s' * (len(grids) != 1)})</summary>"]
    faults = config.get("faults") or []
    if faults:
        parts.append("<p>Faulty on purpose: "
                     + html.escape("; ".join(describe(f) for f in faults)) + "</p>")
    for picture in grids:
        label = picture.stem.removeprefix("attack-")
        parts.append(f"<p>{html.escape(label)}: original | disguised | reconstructed<br>"
                     f'<img alt="{html.escape(label)}" src="{data_uri(picture)}"></p>')
    parts.append("<p>Resolved config:</p><pre>"
                 + html.escape(json.dumps(config, indent=2, default=str)) + "</pre>")
    parts.append("</details>")
    return "\n".join(parts)


def write_report(out: Path, title: str, table_md: str,
                 cells: list[tuple[str, Path, dict[str, Any]]]) -> Path:
    """out/report.html from the grid's table.md (pictures relative to `out`) and, per
    finished cell, (name, run folder, resolved config)."""
    body = markdown.markdown(table_md, extensions=["tables"], output_format="html")
    body = re.sub(r"<table>", '<div class="scroll"><table>', body)
    body = re.sub(r"</table>", "</table></div>", body)
    body = embed_images(body, out)
    sections = "\n".join(_cell_section(*cell) for cell in cells)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            f"{body}\n<h2>Cells: attack grids and resolved configs</h2>\n{sections}\n"
            f"{SHOWN}\n</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
