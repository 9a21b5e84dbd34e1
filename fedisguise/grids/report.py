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
import shlex
import subprocess
import sys
from datetime import UTC, datetime
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
img.pixels { image-rendering: pixelated; }
img.natural { max-width: none; }
.answer { font-size: 0.95em; background: #eef5ee; }
th.sortable { cursor: pointer; }
th.sortable::after { content: " ⇅"; color: #999; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; font-size: 0.8em; }
details { margin: 0.3em 0; }
"""
# After load, the page says how many of its pictures are shown (read by the tests), draws
# each picture of images at 3x or more (pixels kept sharp), as wide as the page allows, and
# makes every table sort by the column whose header is clicked (numbers by value, "–" last).
SHOWN = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.imagesShown = images.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.images = images.length;
  document.body.dataset.tables = document.querySelectorAll("table").length;
  for (const img of document.querySelectorAll("img.pixels")) {
    const room = img.parentElement.clientWidth;
    const scale = Math.max(3, Math.floor(room / img.naturalWidth));
    img.style.width = Math.min(room, scale * img.naturalWidth) + "px";
    img.style.maxWidth = "none";
    img.dataset.scale = (img.getBoundingClientRect().width / img.naturalWidth).toFixed(2);
  }
  const scales = [...document.querySelectorAll("img.pixels")].map(i => +i.dataset.scale);
  document.body.dataset.minPixelScale = scales.length ? Math.min(...scales) : 0;
  const main = document.querySelector("table");
  document.body.dataset.mainTableFits =
    main ? main.scrollWidth <= main.parentElement.clientWidth : true;
  const value = cell => {
    const text = cell.textContent.trim();
    const number = parseFloat(text.replace("\u2212", "-"));
    return text === "\u2013" || text === "" ? null : isNaN(number) ? text : number;
  };
  for (const table of document.querySelectorAll("table")) {
    table.querySelectorAll("th").forEach((th, column) => {
      th.classList.add("sortable");
      th.addEventListener("click", () => {
        const body = table.tBodies[0];
        const rows = [...body.rows];
        const up = th.dataset.order !== "up";
        th.dataset.order = up ? "up" : "down";
        rows.sort((a, b) => {
          const x = value(a.cells[column]), y = value(b.cells[column]);
          if (x === null || y === null) return (x === null) - (y === null);
          const order = typeof x === "number" && typeof y === "number" ? x - y
            : String(x).localeCompare(String(y));
          return up ? order : -order;
        });
        rows.forEach(row => body.appendChild(row));
      });
    });
  }
  document.body.dataset.sortableHeaders = document.querySelectorAll("th.sortable").length;
  document.body.dataset.headers = document.querySelectorAll("th").length;
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
                     f'<img class="pixels" alt="{html.escape(label)}" '
                     f'src="{data_uri(picture)}"></p>')
    parts.append("<p>Resolved config:</p><pre>"
                 + html.escape(json.dumps(config, indent=2, default=str)) + "</pre>")
    parts.append("</details>")
    return "\n".join(parts)


def provenance() -> dict[str, Any]:
    """What produced a page: the date, the command line, the fedisguise commit (and whether
    its tracked files differed from it), the library versions."""
    from fedisguise.results import versions

    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": shlex.join(["python", *sys.argv]),
            "commit": commit or "not a git checkout",
            "dirty": bool(changed) if changed is not None else None,
            "versions": versions()}


def _provenance_html(p: dict[str, Any]) -> str:
    commit = p["commit"] + (" (with uncommitted changes)" if p["dirty"] else "")
    items = [("date (UTC)", p["date"]), ("command", p["command"]), ("fedisguise commit", commit),
             ("versions", ", ".join(f"{k} {v}" for k, v in p["versions"].items()))]
    return ("<h2>Provenance</h2><ul>"
            + "".join(f"<li>{k}: <code>{html.escape(str(v))}</code></li>" for k, v in items)
            + "</ul>")


def write_report(out: Path, title: str, table_md: str,
                 cells: list[tuple[str, Path, dict[str, Any]]],
                 answer: list[str] = ()) -> Path:
    """out/report.html from the grid's table.md (pictures relative to `out`), led by the
    `answer` the terminal prints, and per finished cell (name, run folder, resolved config),
    closed by its provenance."""
    body = markdown.markdown(table_md, extensions=["tables"], output_format="html")
    body = re.sub(r"<table>", '<div class="scroll"><table>', body)
    body = re.sub(r"</table>", "</table></div>", body)
    # the level grid is drawn at 3x already (strongest.LEVEL_GRID_SCALE): shown at its own
    # size, scrolled sideways where the page is narrower
    body = re.sub(r'(<img alt="original \| disguised \| best[^>]*>)',
                  r'<div class="scroll">\1</div>', body).replace(
        '<img alt="original | disguised | best', '<img class="natural" alt="original | '
        'disguised | best')
    body = embed_images(body, out)
    head = ("<h2>Answer</h2><pre class=\"answer\">" + html.escape("\n".join(answer))
            + "</pre>\n") if answer else ""
    sections = "\n".join(_cell_section(*cell) for cell in cells)
    page = (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>\n"
            f"<h1>{html.escape(title)}</h1>\n{head}"
            f"{body}\n<h2>Cells: attack grids and resolved configs</h2>\n{sections}\n"
            f"{_provenance_html(provenance())}\n{SHOWN}\n</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path
