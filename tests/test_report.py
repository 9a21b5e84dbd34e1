"""report.html: one self-contained page per comparison grid, checked in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest

from fedisguise.grids.report import embed_images
from fedisguise.grids.spec import load_grid
from fedisguise.grids.table import write_table
from tests.test_compare import LEVEL_GRID, finish_cells, grid_file

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def entry(kind: str, level: int, psnr: float, **more) -> dict:
    return {"attack": kind, "status": "ok", "level": level, "psnr_vs_original": psnr,
            "ssim_vs_original": psnr / 100, "recognisability": psnr / 50, **more}


def report_of(tmp_path):
    """A finished two-defence grid with one attack grid picture on disk."""
    grid = load_grid(grid_file(tmp_path, LEVEL_GRID), out=str(tmp_path))
    picture = "images/attack-window_stats.png"
    finish_cells(grid, {
        ("vm", "l1", 0): {"window_stats": entry("window_stats", 1, 21.0, grid=picture, n=8)},
        ("none", "l0", 0): {"as_observed": entry("as_observed", 0, 100.0, n=1)},
    }, {"none": 0.85, "vm": 0.80})
    cell = next(c for c in grid.cells if (c.defence, c.attack, c.seed) == ("vm", "l1", 0))
    (cell.config.run_dir / "images").mkdir()
    matplotlib.image.imsave(cell.config.run_dir / picture,
                            np.random.default_rng(0).random((28, 84)), cmap="gray")
    write_table(grid)
    return grid, grid.out / "report.html"


def test_the_report_holds_the_table_pictures_and_configs_in_one_file(tmp_path):
    grid, path = report_of(tmp_path)
    page = path.read_text()
    # Self-contained: every picture embedded, nothing fetched.
    sources = re.findall(r'<img[^>]*\bsrc="([^"]+)"', page)
    assert len(sources) >= 3  # the plots, the level grid, the cell's attack grid
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page
    # The table (one <table> per markdown table, pipes in titles escaped) and the configs.
    tables = [line for line in (grid.out / "table.md").read_text().splitlines()
              if line.startswith("| --- |")]
    assert len(tables) >= 2 and page.count("<table>") == len(tables)
    assert "<td>vm</td>" in page and "window_stats: 20.0 / 0.200 / 0.40" not in page
    assert "window_stats: 21.0 / 0.210 / 0.42 (n 8)" in page  # the images behind it
    table = (grid.out / "table.md").read_text()
    assert "21.0 (n 8)" in table and "100.0 (n 1)" in table
    assert '"disguise": "visualmixer"' in page  # a cell's resolved config


def test_a_picture_missing_on_disk_is_named_not_linked(tmp_path):
    text = embed_images('<p><img alt="x" src="gone.png"></p>', tmp_path)
    assert "<img" not in text and "gone.png not on disk" in text


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_the_report_shows_its_tables_and_pictures_in_headless_chromium(tmp_path):
    _, path = report_of(tmp_path)
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
         path.resolve().as_uri()], capture_output=True, text=True, timeout=120,
        check=True).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    shown = dict(re.findall(r'data-([a-z-]+)="([\w.]+)"', body))
    assert int(shown["tables"]) >= 2  # the grid's table and the level table
    assert int(shown["images"]) >= 3 and shown["images-shown"] == shown["images"]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium)")
def test_the_report_reads_at_1400_px_answer_first_sortable_pictures_at_3x(tmp_path):
    _, path = report_of(tmp_path)
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              "--window-size=1400,1800"]
    dom = subprocess.run([*common, "--dump-dom", path.resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    shown = dict(re.findall(r'data-([a-z-]+)="([\w.]+)"', re.search(r"<body([^>]*)>",
                                                                    dom).group(1)))
    assert shown["main-table-fits"] == "true"  # the answer's columns, the rest below
    assert shown["sortable-headers"] == shown["headers"] != "0"  # every column sorts
    assert float(shown["min-pixel-scale"]) >= 3  # originals beside reconstructions, 3x
    page = path.read_text()
    # the answer the terminal prints comes first; provenance closes the page
    assert page.index('<pre class="answer">') < page.index("<table>")
    assert "  vm: accuracy 0.800 ± 0.000 (-5.0 points vs none); strongest attack " \
        "(window_stats) 21.0 dB vs original (n 8)" in page
    for item in ("date (UTC)", "command", "fedisguise commit", "versions", "torch "):
        assert item in page
    assert "DESIGN.md" not in page and "../" not in page  # nothing outside the repository
    shot = tmp_path / "report.png"
    subprocess.run([*common, f"--screenshot={shot}", path.resolve().as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert matplotlib.image.imread(shot).shape[1] == 1400
