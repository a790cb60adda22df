"""What a new user trips on: preview tiles say which steps fired with their values, every named file
gets its row, recipes whose magnitudes do not fit the image size are warned about, and train refuses a
labelled dataset instead of reading images/ and labels/ as two classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _imgs import photo

from augkit.offline.preview import describe_applied, render_grid
from augkit.recipe.api import parse_recipe

RECIPE = """
name: cap
train:
  - flip: {direction: horizontal, p: 0.5}
  - rotate: {degrees: 20, p: 0.5}
  - linear: {a: [0.8, 1.2], b: [-20, 20], p: 0.5}
"""


def test_captions_name_exactly_the_steps_that_fired_with_their_values():
    aug = parse_recipe(RECIPE).build()
    img = photo()
    seen = set()
    for seed in range(12):
        out, applied = aug(img, seed)
        text = describe_applied(applied)
        ops = [a["op"] for a in applied]
        for op in ("flip", "rotate", "linear"):
            assert (op in text) == (op in ops), (seed, text, ops)
        if "linear" in ops:
            a = next(x for x in applied if x["op"] == "linear")["params"]["a"]
            assert f"a={a:.3g}" in text
        if not applied:
            assert text == "no step fired (unchanged)" and np.array_equal(out, img)
        seen.add(tuple(ops))
    assert len(seen) > 3  # the seeds drew different subsets, and the captions followed them


def test_captions_are_drawn_under_their_tiles():
    tile = np.zeros((40, 40, 3), np.uint8)
    plain = render_grid([[tile, tile]], ["original", "seed 0"], ["a.jpg"], 48)
    captioned = render_grid(
        [[tile, tile]], ["original", "seed 0"], ["a.jpg"], 48, captions=[["", "flip; rotate angle=7"]]
    )
    assert captioned.shape[0] > plain.shape[0] and captioned.shape[1] == plain.shape[1]


def test_every_named_file_gets_a_row_and_folders_fill_up_to_images(tmp_path):
    from augkit.offline.preview import pick_images

    root = Path(__file__).resolve().parent.parent / "samples"
    named = sorted((root / "cat").glob("*.jpg")) + sorted((root / "coffee").glob("*.jpg"))[:2]
    assert pick_images(named, 4) == named  # 7 named files: 7 rows, never cut to --images silently
    picked = pick_images([root], 4)
    assert len(picked) == 4 and len({p.parent.name for p in picked}) == 4  # classes in turn


def test_trivial_augment_on_small_images_is_warned_about_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from augkit.cli import app
    from augkit.recipe.api import load_recipe
    from augkit.recipe.fit import size_warnings

    recipe = load_recipe("digits-trivial")
    warned = size_warnings(recipe, 28)
    assert len(warned) == 1 and "32 px" in warned[0] and "114% of a 28 px image" in warned[0]
    assert size_warnings(recipe, 224) == [] and size_warnings(load_recipe("digits"), 28) == []
    assert size_warnings(load_recipe("default"), 16) == []  # fractions of the side: they fit any size
    f = tmp_path / "r.yaml"
    f.write_text("name: r\ntrain:\n  - one_of:\n      steps:\n        - trivial_augment: {}\n        - flip: {}\n")
    res = CliRunner().invoke(app, ["recipes", "check", str(f), "--image-size", "32"])
    assert res.exit_code == 0 and "train[0] one_of.steps[0] trivial_augment: translates by up to 32 px" in " ".join(
        res.output.split()
    )


def test_train_refuses_a_labelled_dataset_instead_of_reading_images_and_labels_as_classes(tmp_path):
    from typer.testing import CliRunner

    from augkit.cli import app

    root = tmp_path / "pets"
    (root / "images" / "train").mkdir(parents=True)
    (root / "labels" / "train").mkdir(parents=True)
    src = Path(__file__).resolve().parent.parent / "samples" / "cat" / "cat_01_full.jpg"
    (root / "images" / "train" / "a.jpg").write_bytes(src.read_bytes())
    (root / "labels" / "train" / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/train\nnames: [cat]\n")
    res = CliRunner().invoke(app, ["train", str(root), "-o", str(tmp_path / "run"), "--weights", "none"])
    assert res.exit_code == 2 and "looks like a yolo dataset" in " ".join(res.output.split())
    assert not (tmp_path / "run").exists()


def test_preview_recipe_none_shows_the_originals(tmp_path):
    import cv2
    from typer.testing import CliRunner

    from augkit.cli import app

    out = tmp_path / "none.png"
    samples = Path(__file__).resolve().parent.parent / "samples"
    res = CliRunner().invoke(
        app, ["preview", str(samples), "-r", "none", "--images", "2", "--cell", "64", "-o", str(out)]
    )
    assert res.exit_code == 0 and "no augmentation" in res.output
    grid = cv2.imread(str(out))
    assert grid is not None and grid.shape[1] < 2 * (64 + 8)  # one column: the originals only
