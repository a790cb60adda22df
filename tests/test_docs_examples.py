"""The README's and docs/' examples run as written, on a copy of samples/.

Every ```bash block of a page runs, in order, in one fresh folder per page that holds a copy of
``samples/`` (so a page's later examples can use what its earlier ones made); every ```python block of
the README runs there too. A block preceded by ``<!-- not run by the tests: REASON -->`` is skipped,
and the test says which and why. ```text blocks are transcripts and synopses, never run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
SKIP = re.compile(r"<!--\s*not run by the tests:\s*(.+?)\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")


def blocks(page: Path) -> list[tuple[int, str, str, str | None]]:
    """(line, language, code, skip reason) of every fenced block of a page."""
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m and m.group(1):
            start, lang = i, m.group(1)
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
            skip = SKIP.match(prev.strip())
            out.append((start + 1, lang, "\n".join(lines[i + 1 : j]), skip.group(1) if skip else None))
            i = j
        i += 1
    return out


def runnable(page: Path) -> bool:
    return any(lang in ("bash", "python") for _, lang, _, _ in blocks(page))


def test_every_skipped_example_says_why():
    for page in PAGES:
        for line, lang, _code, reason in blocks(page):
            if lang in ("bash", "sh", "shell", "console"):
                assert lang == "bash", f"{page.name}:{line}: shell examples are ```bash (or ```text for transcripts)"
            if reason is not None:
                assert len(reason) > 10, f"{page.name}:{line}: say why the example is not run"


@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p)], ids=lambda p: p.name)
def test_examples_run_as_written(page: Path, tmp_path: Path):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ROOT / "samples", work / "samples", ignore=shutil.ignore_patterns("*.py", "*.md"))
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    skipped = []
    for line, lang, code, reason in blocks(page):
        if reason is not None:
            skipped.append(f"{page.name}:{line}: {reason}")
            continue
        if lang == "bash":
            cmd = ["bash", "-euo", "pipefail", "-c", code]
        elif lang == "python" and page.name == "README.md":
            cmd = [sys.executable, "-c", code]
        else:
            continue
        p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, (
            f"{page.name}:{line} failed ({p.returncode}):\n{code}\n{p.stdout[-2000:]}{p.stderr[-3000:]}"
        )
    if skipped:
        print("not run:\n" + "\n".join(skipped))
