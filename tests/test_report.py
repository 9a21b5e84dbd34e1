"""report.html: one self-contained page per comparison grid, checked in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest

from fedisguise.compare import load_grid, write_table
from fedisguise.report import embed_images
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
        ("vm", "l1", 0): {"window_stats": entry("window_stats", 1, 21.0, grid=picture)},
        ("none", "l0", 0): {"as_observed": entry("as_observed", 0, 100.0)},
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
    assert "window_stats: 21.0 / 0.210 / 0.42" in page
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
    shown = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body))
    assert int(shown["tables"]) >= 2  # the grid's table and the level table
    assert int(shown["images"]) >= 3 and shown["images-shown"] == shown["images"]
