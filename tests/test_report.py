"""``augkit report``: one self-contained HTML page (nothing fetched when viewed), rendered in a real
headless browser where one is installed (Debian's chromium; .ci/run installs it)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from _digits import digits_folder
from typer.testing import CliRunner

from augkit.cli import app

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _invoke(*args) -> object:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> tuple[Path, Path, dict]:
    root = tmp_path_factory.mktemp("report")
    data = digits_folder(root / "data", digits=(0, 1, 7), per_class=6, size=24)
    run = root / "run"
    _invoke("train", data, "-o", run, "--weights", "none", "--epochs", "2", "--image-size", "24", "--batch-size", "6",
            "--workers", "0", "--recipe", "digits")  # fmt: skip
    report = root / "eval.json"
    _invoke("evaluate", run, data, "--tta", "shift", "--report", report, "--workers", "0")
    out = root / "run.html"
    res = _invoke("report", run, report, "-o", out)
    assert "wrote" in res.output
    return out, run, json.loads(report.read_text())


def test_the_page_is_self_contained_and_every_picture_is_a_png(page):
    out, _run, rep = page
    text = out.read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert refs and all(r.startswith("data:") or r.startswith("#") for r in refs), [r[:40] for r in refs]
    assert "<script" not in text and "@import" not in text and "url(" not in text
    pictures = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    for b64 in pictures:
        img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 8 and img.shape[1] > 8
    # the curves, one picture per TTA view (5 for shift), and one per mistake shown
    assert len(pictures) == 1 + 5 + min(24, len(rep["mistakes"]))
    for section in (
        "Settings",
        "Training curves",
        "Epochs",
        "Each view alone",
        "Per class",
        "Confusion",
        "The TTA views",
    ):
        assert f">{section}" in text, section
    assert ("Most confident mistakes" in text) == bool(rep["mistakes"])
    for m in rep["mistakes"][:24]:
        assert Path(m["path"]).name in text  # tiles named by file


def test_the_page_renders_in_a_headless_browser_with_every_image_loaded(page, tmp_path):
    if CHROMIUM is None:
        pytest.skip("no headless browser installed (apt-get install chromium; .ci/run does)")
    out, _run, _rep = page
    probe = tmp_path / "probe.html"
    check = (
        "<script>window.addEventListener('load',()=>{const i=[...document.images];"
        "const ok=i.filter(x=>x.complete&&x.naturalWidth>0).length;"
        "document.title=(ok===i.length?'LOADED ':'BROKEN ')+ok+'/'+i.length;});</script>"
    )
    probe.write_text(out.read_text(encoding="utf-8").replace("</body>", check + "</body>"), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]  # fmt: skip
    p = subprocess.run([CHROMIUM, *flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>([^<]*)</title>", p.stdout)
    n = len(re.findall(r"<img ", out.read_text(encoding="utf-8")))
    assert title and title.group(1) == f"LOADED {n}/{n}", (p.stdout[:300], p.stderr[-500:])
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,1600", f"--screenshot={shot}", out.as_uri()],
                   capture_output=True, timeout=120)  # fmt: skip
    img = cv2.imread(str(shot))
    assert img is not None and img.std() > 5  # a page was drawn, not a blank screen


def test_mistakes_in_the_report_refuse_cleanly(page, tmp_path):
    out, run, _rep = page
    res = runner.invoke(app, ["report", str(run), "-o", str(out)])
    assert res.exit_code == 2 and "exists" in res.output  # never overwritten without --overwrite
    res = runner.invoke(app, ["report", str(tmp_path), "-o", str(tmp_path / "x.html")])
    assert res.exit_code == 2 and "not a run folder" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = runner.invoke(app, ["report", str(run), str(bad), "-o", str(tmp_path / "y.html")])
    assert res.exit_code == 2 and "not an augkit evaluate report" in res.output
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "y.html").exists()


def test_preview_tta_draws_each_view_as_the_model_sees_it(page, tmp_path):
    from augkit.infer.engine import resolve_tta
    from augkit.io.images import read_image
    from augkit.report.views import view_tiles

    img = read_image(Path(__file__).resolve().parent.parent / "samples" / "cat" / "cat_01_full.jpg")
    tiles = dict(view_tiles(img, resolve_tta("flip+shift"), 64))
    assert len(tiles) == 10 and all(t.shape == (64, 64, 3) and t.dtype == np.uint8 for t in tiles.values())
    assert np.array_equal(tiles["hflip"], tiles["identity"][:, ::-1])  # exact: a mirror is a mirror
    shifted = tiles["shift(x=0.05,y=0)"]  # content moves right by round(0.05 * 64) = 3 px
    assert np.array_equal(shifted[:, 3:], tiles["identity"][:, :-3])
    _out, run, _rep = page
    out = tmp_path / "views.png"
    res = runner.invoke(app, ["preview", str(Path(__file__).resolve().parent.parent / "samples"), "--tta", str(run),
                              "--images", "2", "-o", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "5 TTA view(s)" in res.output and "the run's recipe 'digits'" in " ".join(res.output.split())
    assert cv2.imread(str(out)) is not None
    res = runner.invoke(app, ["preview", str(tmp_path), "--tta", "flipp", "-o", str(tmp_path / "x.png")])
    assert res.exit_code == 2 and "not a preset" in res.output
