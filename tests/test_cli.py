"""The ``augkit`` command itself: instant start-up (no torch for help, version and recipes), lazy
command loading that agrees with each command, and Ctrl-C during start-up (exit 130, no traceback).

Start-up is checked in fresh subprocesses through ``sys.modules`` (what got imported), never by
wall-clock time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from augkit import cli

HEAVY = ("torch", "torchvision", "ray")
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "RAY_AUTH_MODE": "disabled"}


def run_cli_and_list_modules(*args: str, cwd: Path | None = None) -> tuple[int, str, set[str]]:
    """Run ``augkit ARGS`` through :func:`augkit.cli.main` in a fresh interpreter; return its exit code,
    its stdout and which of the heavy packages it imported."""
    code = (
        "import json, sys\n"
        f"sys.argv = ['augkit', *{list(args)!r}]\n"
        "from augkit.cli import main\n"
        "try:\n    main()\n"
        "except SystemExit as e:\n    rc = e.code or 0\nelse:\n    rc = 0\n"
        f"print(json.dumps([rc, sorted(m for m in {HEAVY!r} if m in sys.modules)]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr
    *lines, last = proc.stdout.strip().splitlines()
    rc, heavy = json.loads(last)
    return rc, "\n".join(lines), set(heavy)


@pytest.mark.parametrize("args", [("--version",), ("--help",), ("recipes", "--help")])
def test_version_and_help_import_no_torch(args):
    rc, out, heavy = run_cli_and_list_modules(*args)
    assert rc == 0
    assert heavy == set(), f"augkit {' '.join(args)} imported {heavy}"


def test_version_prints_the_version():
    from augkit import __version__

    rc, out, _ = run_cli_and_list_modules("--version")
    assert out.strip() == f"augkit {__version__}"


def test_recipes_commands_import_no_torch(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  - flip: {p: 0.5}\n  - albumentations: {transform: GaussianBlur, blur_limit: [3, 5]}\n")
    for args in (
        ("recipes", "list"),
        ("recipes", "show", "default"),
        ("recipes", "check", str(good)),
        ("recipes", "ops"),
    ):
        rc, out, heavy = run_cli_and_list_modules(*args)
        assert rc == 0, (args, out)
        assert heavy == set(), f"augkit {' '.join(args)} imported {heavy}"


def test_root_help_lists_every_command_with_its_own_help():
    """The one-line helps in cli.COMMANDS (shown without importing) are each command's real help."""
    runner = CliRunner()
    res = runner.invoke(cli.app, ["--help"])
    assert res.exit_code == 0
    from augkit.commands._lazy import load_command

    for name, (module, attr, short) in cli.COMMANDS.items():
        assert name in res.output
        real = load_command(name, module, attr)
        first = " ".join((real.help or "").strip().split("\n\n")[0].split())
        assert first == short, f"cli.COMMANDS[{name!r}] help drifted from the command's docstring"
        sub = runner.invoke(cli.app, [name, "--help"])
        assert sub.exit_code == 0, (name, sub.output)


def test_unknown_command_suggests_without_importing():
    rc, _, heavy = run_cli_and_list_modules("recipe")
    assert rc == 2 and heavy == set()
    res = CliRunner().invoke(cli.app, ["recipe"])
    assert res.exit_code == 2
    assert "Did you mean 'recipes'" in res.output


def test_keyboard_interrupt_while_importing_a_command_exits_130():
    """A SIGINT raised while main() is importing a command module: exit 130, one line, no traceback.

    Deterministic: an import hook sends the signal when ``augkit.commands.recipes`` is being imported.
    """
    code = (
        "import os, signal, sys\n"
        "class Hook:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'augkit.commands.recipes':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Hook())\n"
        "sys.argv = ['augkit', 'recipes', 'list']\n"
        "from augkit.cli import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == cli.EXIT_INTERRUPTED == 130
    assert "Traceback" not in proc.stderr
    assert "interrupted" in proc.stderr


def test_sigint_during_start_up_exits_130_without_traceback():
    """A real Ctrl-C from outside, sent as soon as the CLI's own module is imported (the command module,
    numpy and albumentations are still to come). If a loaded machine lets the child finish first, try again."""
    interrupted = 0
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-X", "importtime", "-m", "augkit", "recipes", "list"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert proc.stderr is not None
        for line in proc.stderr:
            if "augkit.commands._lazy" in line:
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.stderr.read()
        rc = proc.wait(timeout=120)
        if rc == 0:
            continue
        assert rc == 130, rest[-2000:]
        assert "Traceback" not in rest
        interrupted += 1
        break
    assert interrupted, "the child always finished before the signal"


def test_recipes_check_checks_every_file_then_exits_2(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("train:\n  - flip: {p: 0.5}\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  - rotate: {degres: 10}\n")
    missing = tmp_path / "missing.yaml"
    res = CliRunner().invoke(cli.app, ["recipes", "check", str(bad), str(good), str(missing), str(good)])
    assert res.exit_code == 2
    assert res.output.count(f"{good}: ok") == 2
    assert f"{bad}:2: train[0] rotate: unknown parameter 'degres'" in res.output
    assert f"{missing}: recipe file not found" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    ok = CliRunner().invoke(cli.app, ["recipes", "check", str(good), str(good)])
    assert ok.exit_code == 0


@pytest.mark.parametrize(
    "text",
    [
        "train:\n  - flip:\n      direction:\n"
        + "".join(
            f"        {c}: &{c} [{', '.join([f'*{p}'] * 9) if p.strip() else ', '.join(['lol'] * 9)}]\n"
            for p, c in zip(" abcdefgh", "abcdefghi")
        ),
        "train:\n  - albumentations: {transform: Resize, height: 100000, width: 100000}\n",
        "train:\n  - shift: {x: " + "9" * 5000 + "}\n",
        "train:\n  - shift: {x: 1.0e+400}\n",
        "train: " + "[" * 500 + "]" * 500 + "\n",
    ],
    ids=["alias-bomb", "huge-resize", "5000-digits", "1e400", "nested-500"],
)
def test_hostile_recipes_exit_2_with_one_short_line(tmp_path, text):
    """Bad checkpoints through the real command: exit 2, one short message, no traceback."""
    f = tmp_path / "r.yaml"
    f.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "augkit", "recipes", "check", str(f)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and len(proc.stderr) < 600


def test_recipe_files_that_are_not_regular_or_too_large_are_refused_unread(tmp_path):
    """A FIFO named r.yaml (would block forever), /dev/zero (never ends), a 2 MB file: exit 2, each named."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    big = tmp_path / "big.yaml"
    big.write_text("#" * 2_000_000)
    proc = subprocess.run(
        [sys.executable, "-m", "augkit", "recipes", "check", str(fifo), str(zero), str(big)],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{fifo}: cannot read recipe (not a regular file: a FIFO)" in proc.stderr
    assert f"{zero}: cannot read recipe (not a regular file: a character device)" in proc.stderr
    assert f"{big}: cannot read recipe (too large" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture
def cat_png(tmp_path) -> Path:
    import cv2
    import skimage.data

    path = tmp_path / "cat.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR))
    return path


def test_preview_refuses_special_files_and_absurd_grids(tmp_path, cat_png):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    runner = CliRunner()
    res = runner.invoke(cli.app, ["preview", str(fifo), "-o", str(tmp_path / "p.png")])
    assert res.exit_code == 2 and "not a regular file" in res.output
    for opt in (["--cell", "100000"], ["--versions", "10000"], ["--images", "0"]):
        res = runner.invoke(cli.app, ["preview", str(cat_png), "-o", str(tmp_path / "p.png"), *opt])
        assert res.exit_code == 2 and "--cell 48-1024" in res.output, opt
    assert not (tmp_path / "p.png").exists()


def test_preview_of_a_photo_has_the_grid_size(tmp_path, cat_png):
    import cv2

    out = tmp_path / "p.png"
    res = CliRunner().invoke(cli.app, ["preview", str(cat_png), "-o", str(out), "--versions", "3", "--cell", "64"])
    assert res.exit_code == 0, res.output
    grid = cv2.imread(str(out))
    assert grid.shape[1] == 4 * (64 + 4) + 4  # original + 3 versions, 4 px padding
