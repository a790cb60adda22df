"""Recipes: the op registry, strict validation, seeding, export and extremes.

Every test compares real pixels or real error messages, so each one can fail.
"""

from __future__ import annotations

import copy
import os
import re

import albumentations as A
import cv2
import numpy as np
import pytest
import yaml

from augkit.errors import RecipeError
from augkit.recipe import ops
from augkit.recipe.api import (
    COMPOSITE_OPS,
    Recipe,
    export_albumentations,
    list_builtin,
    load_recipe,
    parse_recipe,
    seed_random_state,
    step_extremes,
)
from augkit.recipe.ops import ALBU_OP
from augkit.recipe.passthrough import MAX_SIDE


def one_step(op: str, body: dict) -> str:
    """Recipe text with a single train step."""
    return yaml.safe_dump({"train": [{op: body}]}, sort_keys=False)


def walk(steps):
    """Every step of a train section, composites and their children included."""
    for s in steps:
        yield s
        yield from walk(s.children)


def run(recipe: Recipe, image: np.ndarray, seed: int) -> np.ndarray:
    return recipe.build()(image, seed)[0]


# ====================================================================== the registry drives these


def missing_examples() -> list[str]:
    return [name for name in ops.list_ops() if not ops.OPS[name].example]


def test_every_registered_op_has_an_example():
    assert ops.list_ops(), "no ops registered"
    assert missing_examples() == [], "ops registered without an example"


def test_missing_example_is_detected(monkeypatch):
    # The check above must notice a newly registered op that forgot its example.
    monkeypatch.setattr(ops, "OPS", dict(ops.OPS))
    ops.register_op("no_example_op", params={}, doc="test only")(lambda prm, p, border, fill: A.NoOp(p=p))
    assert missing_examples() == ["no_example_op"]


@pytest.mark.parametrize("name", ops.list_ops())
def test_op_example_runs(name, photo):
    spec = ops.OPS[name]
    example = copy.deepcopy(spec.example)
    recipe = parse_recipe(one_step(name, example))
    assert [s.op for s in recipe.train] == [name]
    aug = recipe.build()
    for seed in (0, 1, 2):
        out, applied = aug(photo, seed)
        assert out.dtype == np.uint8 and out.shape == photo.shape
        again, applied_again = recipe.build()(photo, seed)
        assert np.array_equal(out, again), f"{name}: same seed, different pixels"
        assert applied == applied_again


@pytest.mark.parametrize("name", ops.list_ops())
def test_op_changes_pixels_when_applied(name, photo):
    example = {**copy.deepcopy(ops.OPS[name].example), "p": 1.0}
    aug = parse_recipe(one_step(name, example)).build()
    outs = []
    for seed in (0, 1, 2):
        out, applied = aug(photo, seed)
        assert not np.array_equal(out, photo), f"{name} with p=1 left the image unchanged (seed {seed})"
        assert [a["op"] for a in applied] == [name]
        outs.append(out)
    if name != "flip":  # a flip has nothing to sample; every other example has a real range
        assert not np.array_equal(outs[0], outs[1]) or not np.array_equal(outs[1], outs[2])
    # p=0: never applied, the input comes back untouched
    out0, applied0 = parse_recipe(one_step(name, {**example, "p": 0.0})).build()(photo, 0)
    assert np.array_equal(out0, photo) and applied0 == []


def test_linear_is_a_times_x_plus_b(photo):
    recipe = parse_recipe("train:\n  - linear: {a: [1.3, 1.3], b: [-17, -17], p: 1}\n")
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[:, None, None], 3, axis=2).reshape(16, 16, 3)
    for image in (ramp, photo):
        out, applied = recipe.build()(image, 0)
        assert applied[0]["params"] == {"a": 1.3, "b": -17.0}
        x = image.astype(np.int64)
        exact = np.clip((13 * x - 170) // 10, 0, 255)  # floor(clip(1.3 x - 17)) in exact integer arithmetic
        diff = out.astype(np.int64) - exact
        # albumentations builds its lookup table in float32, so where 1.3x - 17 is exactly an
        # integer (x = 90, 170, 180, 190, ...) it can land one level below. Everywhere else: exact.
        on_integer = (13 * x - 170) % 10 == 0
        assert np.all(diff[~on_integer] == 0)
        assert np.all(np.isin(diff[on_integer], (-1, 0)))


# ====================================================================== errors

ERRORS = [
    # id, recipe text, message pattern, line
    ("python-tag", "train:\n  - !!python/object:os.system {}\n", r"tag not allowed", 2),
    ("duplicate-key", "name: a\ntrain:\n  - flip: {p: 0.5}\nname: b\n", r"duplicate key 'name' \(first at line 1\)", 4),
    ("duplicate-param", "train:\n  - rotate:\n      degrees: 5\n      degrees: 6\n", r"duplicate key 'degrees'", 4),
    ("p-no", "train:\n  - flip:\n      direction: horizontal\n      p: no\n", r"p: False is not a number", 4),
    ("unknown-op", "train:\n  - flip: {}\n  - fllip: {}\n", r"unknown op 'fllip'; did you mean 'flip'", 3),
    (
        "albu-typo",
        "train:\n  - albumentations: {transform: GausianBlur}\n",
        r"unknown albumentations transform 'GausianBlur'; did you mean 'GaussianBlur'",
        2,
    ),
    (
        "albu-as-op",
        "train:\n  - CLAHE: {}\n",
        r"CLAHE is an albumentations transform: write  - albumentations: \{transform: CLAHE",
        2,
    ),
    (
        "param-typo",
        "train:\n  - rotate:\n      p: 0.5\n      degres: 10\n",
        r"unknown parameter 'degres' for op 'rotate'; did you mean 'degrees'",
        4,
    ),
    ("p-out-of-range", "train:\n  - flip: {p: 1.5}\n", r"p: 1.5 is out of range.*allowed: a number in \[0, 1\]", 2),
    ("shift-out-of-range", "train:\n  - shift:\n      x: 3\n", r"x: 3 \(= \[-3.0, 3.0\]\) is out of range", 3),
    ("low-above-high", "train:\n  - rotate:\n      degrees: [30, -20]\n", r"low is greater than high", 3),
    (
        "weights-count",
        "train:\n  - one_of:\n      weights: [1]\n      steps: [flip, rotate]\n",
        r"weights \[1\] must be 2 numbers >= 0",
        2,
    ),
    (
        "weights-negative",
        "train:\n  - one_of:\n      weights: [1, -1]\n      steps: [flip, rotate]\n",
        r"weights \[1, -1\] must be 2 numbers >= 0",
        2,
    ),
    ("weights-zero", "train:\n  - one_of:\n      weights: [0, 0]\n      steps: [flip, rotate]\n", r"positive sum", 2),
    (
        "some-of-n",
        "train:\n  - flip: {}\n  - some_of:\n      n: 3\n      steps: [flip, rotate]\n",
        r"some_of: n: 3 is out of range.*an integer in \[1, 2\]",
        3,
    ),
    ("top-level-key", "name: x\ntrian:\n  - flip: {}\n", r"unknown top-level key 'trian'; did you mean 'train'", 2),
    ("tta-preset-and-views", "tta:\n  preset: flip\n  views: [hflip]\n", r"exactly one of preset or views", 1),
    ("tta-unknown-preset", "tta:\n  preset: flipp\n", r"unknown TTA preset 'flipp'; did you mean 'flip'", 1),
    (
        "tta-unknown-view",
        "tta:\n  views:\n    - identity\n    - hfilp\n",
        r"unknown view 'hfilp'; did you mean 'hflip'",
        4,
    ),
    (
        "albu-invalid-value",
        "train:\n  - albumentations: {transform: GaussNoise, std_range: [2, 3]}\n",
        r"GaussNoise: .*std_range.*must be >= 0 and <= 1",
        2,
    ),
    (
        "albu-unknown-arg",
        "train:\n  - albumentations: {transform: GaussianBlur, blur_limt: [3, 5]}\n",
        r"'blur_limt' are not valid for transform GaussianBlur",
        2,
    ),
    # albumentations only *warns* here and runs with (3, 5) instead
    (
        "albu-warned-fix",
        "train:\n  - albumentations: {transform: Blur, blur_limit: [2, 4]}\n",
        r"Blur: blur_limit: Invalid kernel size range \(2, 4\)",
        2,
    ),
    # albumentations says nothing here and silently sorts the range to (-0.2, 0.3)
    (
        "albu-silent-fix",
        "train:\n  - albumentations: {transform: RandomBrightnessContrast, brightness_limit: [0.3, -0.2]}\n",
        r"brightness_limit: albumentations would silently change \[0.3, -0.2\] to \[-0.2, 0.3\]",
        2,
    ),
]


@pytest.mark.parametrize("text,pattern,line", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_recipe_errors(text, pattern, line):
    with pytest.raises(RecipeError, match=pattern) as info:
        parse_recipe(text, "bad.yaml")
    assert info.value.line == line
    assert str(info.value).startswith(f"bad.yaml:{line}: ")


def test_error_names_step_key_and_allowed():
    with pytest.raises(RecipeError) as info:
        parse_recipe("train:\n  - flip: {}\n  - shift:\n      x: 3\n")
    err = info.value
    assert err.where == "train[1] shift"
    assert "within [-1, 1]" in err.allowed


@pytest.mark.parametrize("name", ["MedianBlur", "RandomRotate90", "ToSepia"])
def test_albumentations_transforms_without_strict_still_work(name, photo):
    # These classes do not accept albumentations' ``strict`` argument.
    recipe = parse_recipe(one_step(ALBU_OP, {"transform": name, "p": 1.0}))
    assert not np.array_equal(run(recipe, photo, 0), photo)
    with pytest.raises(RecipeError, match="blur_lmit"):
        parse_recipe(one_step(ALBU_OP, {"transform": "MedianBlur", "blur_lmit": 3}))


# ====================================================================== built-in recipes


@pytest.mark.parametrize("name", list_builtin())
def test_builtin_recipe_loads(name, photo):
    recipe = load_recipe(name)
    assert recipe.name == name
    assert recipe.train or recipe.tta
    if recipe.train:
        out, _ = recipe.build()(photo, 7)
        assert out.dtype == np.uint8 and out.shape == photo.shape


def test_builtin_list_is_complete():
    assert {"default", "digits", "light", "heavy"} <= set(list_builtin())


def test_digits_recipe_has_no_flip():
    recipe = load_recipe("digits")
    assert recipe.train
    ops_used = [s.op for s in walk(recipe.train)]
    assert "flip" not in ops_used
    albu = [s.params["transform"] for s in walk(recipe.train) if s.op == ALBU_OP]
    assert not any(re.search("Flip|Transpose|D4|Rotate90|Symmetry", t) for t in albu)
    flips = [v for v in recipe.tta.views for p in v.chain if p.kind in ("hflip", "vflip", "rot90")]
    assert flips == []


# ====================================================================== resolved form and hash

COMMENTED = """\
# a recipe with comments
name: c   # trailing comment
train:
  # first a flip
  - flip: {p: 0.5}

  - rotate: {degrees: 10}   # sym range
tta: flip
"""
PLAIN = "name: c\ntrain:\n  - flip: {p: 0.5}\n  - rotate: {degrees: [-10, 10], p: 1.0}\ntta: {preset: flip}\n"


@pytest.mark.parametrize("name", list_builtin())
def test_resolved_round_trip(name):
    recipe = load_recipe(name)
    again = parse_recipe(recipe.resolved_yaml())
    assert again.resolved() == recipe.resolved()
    assert again.hash == recipe.hash


def test_hash_ignores_comments_and_defaults_but_not_values():
    a, b = parse_recipe(COMMENTED), parse_recipe(PLAIN)
    assert a.hash == b.hash
    # the resolved form fills defaults in
    assert a.resolved()["train"][1] == {"rotate": {"degrees": [-10.0, 10.0], "p": 1.0}}
    assert parse_recipe(PLAIN.replace("[-10, 10]", "[-10, 11]")).hash != a.hash
    assert parse_recipe(PLAIN.replace("p: 0.5", "p: 0.6")).hash != a.hash


# ====================================================================== seeding

JITTER = "train:\n  - shift: {x: 0.1, y: 0.1, p: 1}\n  - color: {brightness: 0.3, hue: 0.05, p: 1}\n"


def test_same_seed_same_bytes(photo):
    recipe = load_recipe("heavy")
    first = [run(recipe, photo, s) for s in (0, 1, 2)]
    aug = recipe.build()
    # one Augmenter, seeds in another order: each result depends on its seed only
    for s in (2, 0, 1, 0):
        assert aug(photo, s)[0].tobytes() == first[s].tobytes()


def test_different_seeds_differ(photo):
    recipe = parse_recipe(JITTER)
    outs = [run(recipe, photo, s).tobytes() for s in range(6)]
    assert len(set(outs)) == len(outs)


def test_steps_do_not_share_a_random_stream(photo):
    recipe = parse_recipe("train:\n  - shift: {x: 0.1, y: 0.1, p: 0.5}\n  - shift: {x: 0.1, y: 0.1, p: 0.5}\n")
    aug = recipe.build()
    patterns = {}
    both_same_params = 0
    for seed in range(200):
        _, applied = aug(photo, seed)
        steps = tuple(a["step"] for a in applied)
        patterns[steps] = patterns.get(steps, 0) + 1
        if len(applied) == 2 and applied[0]["params"] == applied[1]["params"]:
            both_same_params += 1
    first, second = ("train[0] shift",), ("train[1] shift",)
    # with a shared stream the two steps would always agree (both or neither)
    assert patterns.get(first, 0) > 20 and patterns.get(second, 0) > 20, patterns
    assert patterns.get(first + second, 0) > 20 and patterns.get((), 0) > 20, patterns
    assert both_same_params == 0


# ====================================================================== export to albumentations

TRAIN_RECIPES = [n for n in list_builtin() if load_recipe(n).train]


def test_there_are_recipes_to_export():
    assert len(TRAIN_RECIPES) >= 3


@pytest.mark.parametrize("suffix", ["json", "yaml"])
@pytest.mark.parametrize("name", TRAIN_RECIPES)
def test_export_reproduces_pixels(name, suffix, photo, tmp_path):
    recipe = load_recipe(name)
    path = export_albumentations(recipe, tmp_path / f"x.{suffix}")
    assert path.exists()
    loaded = A.load(str(path), data_format=suffix)
    aug = recipe.build()
    changed = 0
    for seed in range(5):
        expected = aug(photo, seed, fused=False)[0]  # step by step; the fused default: tests/test_fuse.py
        seed_random_state(loaded, seed)
        got = loaded(image=photo)["image"]
        assert np.array_equal(got, expected), f"{name} seed {seed}"
        changed += not np.array_equal(expected, photo)
    assert changed >= 3  # the comparison is not between untouched images


# ====================================================================== extremes


def test_rotate_extremes_are_exact(photo):
    step = parse_recipe("train:\n  - rotate: {degrees: [-20, 30], p: 0.3}\n").train[0]
    (low_label, low), (high_label, high) = step_extremes(step)
    assert low_label == "rotate low: degrees=-20" and high_label == "rotate high: degrees=30"
    assert low.p == high.p == 1.0
    h, w = photo.shape[:2]
    for s, angle in ((low, -20), (high, 30)):
        recipe = Recipe("x", "", [s], None)
        out = run(recipe, photo, 0)
        assert np.array_equal(out, run(recipe, photo, 99)), "an extreme must not depend on the seed"
        # OpenCV's angle convention is the same as albumentations', about the pixel-grid centre
        m = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, 1.0)
        ref = cv2.warpAffine(photo, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
        assert np.array_equal(out, ref), angle


@pytest.mark.parametrize("name", TRAIN_RECIPES)
def test_every_leaf_has_extremes(name, photo):
    recipe = load_recipe(name)
    leaves = [s for s in walk(recipe.train) if s.op not in COMPOSITE_OPS]
    for leaf in leaves:
        ex = step_extremes(leaf)
        assert ex and all(s.p == 1.0 for _, s in ex)
        spec = ops.OPS.get(leaf.op)
        ranged = spec and [
            k for k, p in spec.params.items() if p.kind == "range" and leaf.params[k][0] != leaf.params[k][1]
        ]
        if not ranged:
            continue
        assert [label.split(":")[0] for label, _ in ex] == [f"{leaf.op} low", f"{leaf.op} high"]
        outs = []
        for _, s in ex:
            r = Recipe("x", "", [s], None, border=recipe.border, fill=recipe.fill)
            out = run(r, photo, 0)
            assert np.array_equal(out, run(r, photo, 0))
            if leaf.op != "color":  # ColorJitter applies its four changes in a random order
                assert np.array_equal(out, run(r, photo, 1)), f"{name}: {leaf.where} extreme depends on the seed"
            outs.append(out)
        assert not np.array_equal(outs[0], outs[1]), f"{name}: {leaf.where} low == high"
    # composites expand to their leaves
    all_ex = [e for s in recipe.train for e in step_extremes(s)]
    assert len(all_ex) >= len(leaves)


def test_border_modes_are_opencv_constants():
    """ops spells OpenCV's border constants as numbers (so the op table loads without cv2)."""
    assert ops.BORDER_MODES == {
        "reflect": cv2.BORDER_REFLECT_101,
        "replicate": cv2.BORDER_REPLICATE,
        "constant": cv2.BORDER_CONSTANT,
        "wrap": cv2.BORDER_WRAP,
    }


def test_recipes_build_without_torch_and_albumentations_pytorch_still_imports():
    """import_albumentations() keeps torch out, yet a user's later ``albumentations.pytorch`` import works."""
    import subprocess
    import sys

    code = (
        "import sys, numpy as np\n"
        "from augkit.recipe.api import load_recipe\n"
        "aug = load_recipe('heavy').build()\n"
        "out, _ = aug(np.zeros((32, 32, 3), np.uint8), 1)\n"
        "assert out.shape == (32, 32, 3)\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "from albumentations.pytorch import ToTensorV2\n"
        "import albumentations\n"
        "assert albumentations.pytorch.ToTensorV2 is ToTensorV2\n"
        "assert ToTensorV2(p=1.0)(image=out)['image'].shape == (3, 32, 32)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


# ====================================================================== hostile recipes

LAUGHS = "".join(
    f"        {c}: &{c} [{', '.join([f'*{p}'] * 9) if p.strip() else ', '.join(['lol'] * 9)}]\n"
    for p, c in zip(" abcdefgh", "abcdefghi")
)


def test_billion_laughs_is_refused_fast_with_the_line():
    """A parameter value of 9 anchors of 9 aliases each: 9**9 strings if expanded. Refused from the node
    graph (each node visited once), never expanded, and the message does not quote the value."""
    text = "train:\n  - flip:\n      direction:\n" + LAUGHS
    assert len(text) < 600
    with pytest.raises(RecipeError, match=r"expands to more than 10000 values through YAML aliases") as info:
        parse_recipe(text, "bomb.yaml")
    assert info.value.line == 8  # e: 9**5 values, the first anchor over the budget
    assert len(str(info.value)) < 300


def test_aliases_within_the_budget_still_work():
    text = "x: &r [-0.1, 0.1]\ntrain:\n  - shift: {x: *r, y: *r}\n"
    with pytest.raises(RecipeError, match="unknown top-level key 'x'"):
        parse_recipe(text)
    r = parse_recipe("train:\n  - shift: {x: &r [-0.1, 0.1], y: *r}\n")
    assert r.train[0].params["y"] == [-0.1, 0.1]


def test_recursive_alias_is_refused():
    with pytest.raises(RecipeError, match="recursive alias") as info:
        parse_recipe("train:\n  - flip: {direction: &a [1, *a]}\n", "r.yaml")
    assert info.value.line == 2


def test_values_quoted_in_errors_are_truncated():
    """A large (but not aliased) value must not be copied whole into the message."""
    big = "[" + ", ".join(["horizontal"] * 3000) + "]"
    with pytest.raises(RecipeError, match=r"direction: \['horizontal', .*\.\.\..* is not one of the choices") as info:
        parse_recipe(f"train:\n  - flip: {{direction: {big}}}\n")
    assert len(str(info.value)) < 400
    with pytest.raises(RecipeError) as info:
        parse_recipe("train:\n  - flip: {direction: " + "x" * 100_000 + "}\n")
    assert len(str(info.value)) < 400


def nested_one_of(depth: int) -> str:
    lines = ["train:"]
    for i in range(depth):
        lines += ["  " * (2 * i + 1) + "- one_of:", "  " * (2 * i + 3) + "steps:"]
    return "\n".join(lines + ["  " * (2 * depth + 3) + "- flip"]) + "\n"


@pytest.mark.parametrize(
    "text",
    [
        nested_one_of(100),
        "train:\n  - flip: {direction: " + "[" * 2000 + "]" * 2000 + "}\n",
        "train:\n  - albumentations: {transform: Blur, blur_limit: " + "[" * 150 + "]" * 150 + "}\n",
    ],
    ids=["composites", "flow-lists", "albumentations-value"],
)
def test_deep_nesting_is_a_recipe_error(text):
    with pytest.raises(RecipeError, match=r"nested more than 40 levels deep") as info:
        parse_recipe(text, "deep.yaml")
    assert info.value.line is not None and info.value.where.startswith("train[0].")


def test_moderate_composite_nesting_still_works(photo):
    r = parse_recipe(nested_one_of(10))
    assert run(r, photo, 0).shape == photo.shape


@pytest.mark.parametrize(
    "value,reason",
    [
        ("9" * 5000, "too large"),
        ("-" + "1" * 30, "too large"),
        ("1.0e+400", "not a finite number"),
        (".inf", "not a finite number"),
        (".nan", "not a finite number"),
        ("99999999999999999999", "too large"),
    ],
)
def test_numbers_yaml_cannot_hold_name_line_step_and_key(value, reason):
    with pytest.raises(RecipeError, match=rf"x: .*\({reason}\) is not a number") as info:
        parse_recipe(f"train:\n  - flip: {{}}\n  - shift:\n      x: {value}\n", "n.yaml")
    assert (info.value.line, info.value.where) == (4, "train[1] shift")
    assert len(str(info.value)) < 400
    with pytest.raises(RecipeError, match=rf"Resize: height: .*\({reason}\)") as info:
        parse_recipe(f"train:\n  - albumentations:\n      transform: Resize\n      height: {value}\n      width: 8\n")
    assert (info.value.line, info.value.where) == (4, "train[0] albumentations")


@pytest.mark.parametrize(
    "transform,key,args",
    [
        ("Resize", "height", "height: 100000, width: 100000"),
        ("Resize", "width", "height: 32, width: 20000"),
        ("LongestMaxSize", "max_size", "max_size: 100000"),
        ("PadIfNeeded", "min_height", "min_height: 50000, min_width: 32"),
        ("RandomResizedCrop", "size", "size: [100000, 100000]"),
        ("CenterCrop", "height", "height: 70000, width: 32"),
        ("GaussianBlur", "blur_limit", "blur_limit: [3, 99999]"),
    ],
)
def test_absurd_sizes_in_albumentations_steps_are_refused(transform, key, args):
    with pytest.raises(
        RecipeError,
        match=rf"{transform}: {key}: \d+ is larger than augkit's bound on sizes "
        rf"\({MAX_SIDE} px\)",
    ) as info:
        parse_recipe(f"train:\n  - flip: {{}}\n  - albumentations: {{transform: {transform}, {args}}}\n", "s.yaml")
    assert (info.value.line, info.value.where) == (3, "train[1] albumentations")


def test_sizes_up_to_the_bound_are_accepted():
    parse_recipe(f"train:\n  - albumentations: {{transform: Resize, height: {MAX_SIDE}, width: 8}}\n")


def test_color_parameters_left_out_mean_no_change(photo):
    """As torchvision's ColorJitter: color {brightness, contrast} does not also jitter saturation (or hue)."""
    r = parse_recipe("train:\n  - color: {brightness: 0.2, contrast: 0.3}\n")
    prm = r.resolved()["train"][0]["color"]
    assert prm["saturation"] == [1.0, 1.0] and prm["hue"] == [0.0, 0.0]
    assert prm["brightness"] == [0.8, 1.2] and prm["contrast"] == [0.7, 1.3]
    t = r.to_albumentations().transforms[0]
    assert tuple(t.saturation) == (1.0, 1.0) and tuple(t.hue) == (0.0, 0.0)
    # Only brightness given, fixed at 1.5: the pixels are exactly brightness * 1.5, whatever the seed.
    only = parse_recipe("train:\n  - color: {brightness: [1.5, 1.5]}\n")
    want = np.clip(photo.astype(np.float32) * 1.5, 0, 255)
    for seed in (0, 1, 2):
        out = run(only, photo, seed)
        assert np.abs(out.astype(np.float32) - want).max() <= 1


# ====================================================================== composites through the registry


def test_every_registry_entry_has_an_example_and_a_listing():
    """Composites and the pass-through are registry entries like the ops (examples, docs, listing)."""
    assert ops.list_composites() == list(COMPOSITE_OPS) == ["one_of", "some_of", "sequence"]
    assert ALBU_OP in ops.list_ops()
    for name, spec in ops.OPS.items():
        assert spec.example and spec.doc, name
        assert spec.listing or not (spec.composite or spec.parse), name
    assert ops.step_names()[-4:] == ["one_of", "some_of", "sequence", ALBU_OP]


@pytest.mark.parametrize("name", ops.list_composites())
def test_composite_example_runs_and_round_trips(name, photo):
    spec = ops.OPS[name]
    recipe = parse_recipe(one_step(name, copy.deepcopy(spec.example)))
    step = recipe.train[0]
    assert step.op == name and [c.op for c in step.children] == ["flip", "rotate"]
    again = parse_recipe(recipe.resolved_yaml())
    assert again.resolved() == recipe.resolved()
    outs = set()
    for seed in range(4):
        out, applied = recipe.build()(photo, seed)
        assert np.array_equal(out, again.build()(photo, seed)[0])
        assert applied and {a["op"] for a in applied} <= {"flip", "rotate"}
        outs.add(out.tobytes())
    assert len(outs) > 1
    # extremes: the children's, in order
    assert [lbl for lbl, _ in step_extremes(step)] == [lbl for c in step.children for lbl, _ in step_extremes(c)]
    # p=0: never applied
    out0, applied0 = parse_recipe(one_step(name, {**spec.example, "p": 0.0})).build()(photo, 0)
    assert np.array_equal(out0, photo) and applied0 == []


def test_a_new_composite_is_one_registration(monkeypatch, photo):
    """Registering a composite is enough for parsing, building, the resolved form, extremes and listing."""
    monkeypatch.setattr(ops, "OPS", dict(ops.OPS))

    def parse_twice(body, ctx):
        return {}, ctx.parse_steps(body["steps"], f"{ctx.where}.steps", ctx.source, ctx.line)

    @ops.register_op(
        "twice",
        params={},
        doc="apply the steps, then again",
        composite=True,
        whole_step=True,
        parse=parse_twice,
        listing="steps",
        example={"steps": ["flip"]},
    )
    def _twice(step, kids):
        return A.Sequential(kids + [type(k)(p=k.p) for k in kids], p=step.p)

    recipe = parse_recipe("train:\n  - twice: {steps: [{flip: {p: 1}}]}\n")
    assert recipe.resolved()["train"] == [
        {"twice": {"p": 1.0, "steps": [{"flip": {"direction": "horizontal", "p": 1.0}}]}}
    ]
    assert np.array_equal(run(recipe, photo, 0), photo)  # flipped twice
    assert [lbl for lbl, _ in step_extremes(recipe.train[0])] == ["flip horizontal"]
    assert "twice" in ops.step_names()
    with pytest.raises(RecipeError, match="unknown op 'twic'; did you mean 'twice'"):
        parse_recipe("train:\n  - twic: {steps: [flip]}\n")
