"""What augkit does to its own processes only (augkit.process_setup): the allocator keeps freed image
buffers (checked by page faults, not time), and albumentations loads without huggingface_hub in
the CLI, while a library user's process keeps albumentations as it is."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}

FAULTS = """
import json, resource, sys
import numpy as np
if sys.argv[1] == "own":
    from augkit import own_process
    assert own_process.keep_freed_buffers()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # warm up: the heap grows once
    a = np.ones((375, 500, 3), np.uint8); b = a * 2; del a, b
f0 = faults()
for _ in range(100):  # what a recipe does: fresh image-sized arrays, written, then freed
    a = np.ones((375, 500, 3), np.uint8); b = a * 2; del a, b
print(json.dumps(faults() - f0))
"""


def _faults(mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
    reason="glibc's allocator only",
)
def test_own_processes_reuse_freed_image_buffers():
    plain, own = _faults("plain"), _faults("own")
    # 100 x 2 arrays of 0.56 MB: ~27,000 page faults when each is mapped fresh
    assert plain > 10_000 and own < plain / 20, (plain, own)


def _hub_state(code: str) -> list:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "\nimport json, sys\n"
            "from albumentations.core import hub_mixin\n"
            "print(json.dumps(['huggingface_hub' in sys.modules, hub_mixin.is_huggingface_hub_available]))",
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_cli_loads_albumentations_without_the_hub_a_library_user_keeps_it():
    pytest.importorskip("huggingface_hub")
    cli = (
        "import sys\nsys.argv = ['augkit', 'recipes', 'show', 'default']\nfrom augkit.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
    )
    assert _hub_state(cli) == [False, False]
    library = "from augkit.recipe.api import load_recipe\nload_recipe('default').build()\n"
    assert _hub_state(library) == [True, True]
    # and a later import in the CLI's process still works (only albumentations' import skipped it)
    assert _hub_state(cli + "import huggingface_hub\n")[0] is True
