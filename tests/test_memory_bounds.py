"""Hostile inputs under a virtual-memory limit (``ulimit -v``) of the normal working size.

Each command first runs on good inputs; its peak virtual memory (``VmPeak``) is the normal working
size. The same command on hostile inputs (a YAML alias bomb, a few-KB PNG of 1 x 999,999 pixels, a
1 x 3,000,000 TIFF, /dev/zero behind a symlink, a FIFO) then runs under ``RLIMIT_AS`` = that size plus
a margin far below what the unguarded cases allocated (2.3 GB for the alias bomb, 5.9 GB for the strip
in predict, ~6 GB read from /dev/zero). It must end with its documented exit code, report each file,
and print no traceback.
"""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from _imgs import class_folder
from _tinymodel import digits3, make_run
from PIL import Image

MARGIN = 768 * 2**20  # well under any of the unguarded allocations above
#: Runs the augkit CLI, then prints this process's peak virtual memory (kB) on stderr's last line.
RUNNER = (
    "import sys, runpy\n"
    "sys.argv = ['augkit'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('augkit', run_name='__main__')\n"
    "except SystemExit as e:\n"
    "    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)\n"
    "else:\n"
    "    code = 0\n"
    "peak = [l for l in open('/proc/self/status') if l.startswith('VmPeak')][0].split()[1]\n"
    "print('VMPEAK', peak, file=sys.stderr)\n"
    "sys.exit(code)\n"
)

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")


def run(args: list, limit: int | None = None) -> tuple[int, str, int]:
    """(exit code, stderr without the VmPeak line, VmPeak in bytes)."""

    def cap() -> None:
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=cap,
        env=env,
    )
    lines = proc.stderr.splitlines()
    peak = next((int(ln.split()[1]) * 1024 for ln in reversed(lines) if ln.startswith("VMPEAK")), 0)
    return proc.returncode, "\n".join(ln for ln in lines if not ln.startswith("VMPEAK")), peak


def strip(path: Path, fmt: str, height: int) -> Path:
    buf = io.BytesIO()
    Image.new("L", (1, height), 200).save(buf, fmt, **({"compression": "tiff_adobe_deflate"} if fmt == "TIFF" else {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path


def hostile_folder(root: Path) -> Path:
    """A class folder of good photos plus the hostile files, as a user's folder might hold them."""
    class_folder(root, per_class=2)
    strip(root / "cat" / "strip.png", "PNG", 999_999)
    strip(root / "cat" / "strip.tif", "TIFF", 3_000_000)
    os.symlink("/dev/zero", root / "coffee" / "zero.jpg")
    os.mkfifo(root / "rocket" / "pipe.jpg")
    return root


BOMB = (
    "".join(
        f"{c}: &{c} [" + ",".join([f"*{p}"] * 9 if p else ['"xxxxxxxx"'] * 9) + "]\n"
        for p, c in zip(["", "a", "b", "c", "d", "e", "f", "g"], "abcdefgh")
    )
    + "train:\n  - flip: {direction: *h}\n"
)


def test_recipe_alias_bomb_stays_within_the_normal_size(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  - flip: {direction: horizontal}\n")
    code, err, normal = run(["recipes", "check", good])
    assert code == 0, err
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    code, err, _ = run(["recipes", "check", bomb], limit=normal + MARGIN)
    assert code == 2, err
    assert "bomb.yaml" in err and "aliases" in err and "Traceback" not in err


def test_augment_of_hostile_files_stays_within_the_normal_size(tmp_path):
    good = class_folder(tmp_path / "good", per_class=2)
    code, err, normal = run(["augment", good, tmp_path / "out_good", "--workers", "1"])
    assert code == 0, err
    src = hostile_folder(tmp_path / "src")
    code, err, _ = run(["augment", src, tmp_path / "out", "--workers", "1"], limit=normal + MARGIN)
    assert code == 3, err  # finished; the hostile inputs skipped and listed
    errors = (tmp_path / "out" / "errors.jsonl").read_text()
    for name, reason in [
        ("strip.png", "bad dimensions"),
        ("strip.tif", "bad dimensions"),
        ("zero.jpg", "not a regular file"),
        ("pipe.jpg", "not a regular file"),
    ]:
        row = next((r for r in errors.splitlines() if name in r), "")
        assert reason in row, (name, errors)
    assert "Traceback" not in err
    assert len(list((tmp_path / "out").rglob("*__aug0.*"))) == 6  # every good photo augmented


def test_predict_of_hostile_files_stays_within_the_normal_size(tmp_path):
    images, target = digits3()
    (tmp_path / "run").mkdir()
    run_dir = make_run(tmp_path / "run", images[:90], target[:90])
    good = class_folder(tmp_path / "good", per_class=2)
    code, err, normal = run(["predict", run_dir, good, "-o", tmp_path / "good.csv", "--workers", "0"])
    assert code == 0, err
    src = hostile_folder(tmp_path / "src")
    code, err, _ = run(
        ["predict", run_dir, src, src / "cat" / "strip.png", "/dev/zero", "-o", tmp_path / "p.csv", "--workers", "0"],
        limit=normal + MARGIN,
    )
    assert code == 3, err
    skipped = (tmp_path / "p.errors.csv").read_text()
    for name in ("strip.png", "strip.tif", "zero.jpg", "pipe.jpg", "/dev/zero"):
        assert name in skipped, (name, skipped)
    assert "Traceback" not in err
    rows = (tmp_path / "p.csv").read_text().splitlines()
    assert len(rows) == 1 + 6  # header + the good photos, each predicted once
