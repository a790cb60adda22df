"""Policies (trivial_augment, rand_augment): torchvision's op tables and pixels, draws only from the
listed ops and magnitudes (read from manifest records), one seed decides the pixels, previews of
the extremes, export, listing and strict parameters."""

from __future__ import annotations

import json

import albumentations as A
import numpy as np
import pytest
import torch
from torchvision.transforms import autoaugment as tv
from typer.testing import CliRunner

from augkit import cli
from augkit.errors import RecipeError
from augkit.recipe.api import export_albumentations, load_recipe, parse_recipe, seed_random_state, step_extremes
from augkit.recipe.policies.functional import OP_NAMES, V2_MATCH, apply_op, augmentation_space, linspace32

POLICY = "train:\n  - trivial_augment: {border: constant}\n  - rand_augment: {n: 2, m: 9, border: constant}\n"
NO_MAGNITUDE = ("Identity", "AutoContrast", "Equalize")


def tv_space(policy: str, h: int, w: int) -> dict:
    if policy == "trivial_augment":
        return tv.TrivialAugmentWide()._augmentation_space(31)
    return tv.RandAugment()._augmentation_space(31, (h, w))


@pytest.mark.parametrize("policy", ["trivial_augment", "rand_augment"])
def test_op_tables_are_torchvisions(policy):
    mine, ref = augmentation_space(policy, 64, 96), tv_space(policy, 64, 96)
    assert tuple(mine) == tuple(ref) == OP_NAMES
    for name, (values, signed) in ref.items():
        assert mine[name][1] == signed, name
        if values.ndim == 0:
            assert mine[name][0] is None, name
        else:
            assert np.allclose(mine[name][0], values.numpy(), atol=1e-4), name


def _v2(policy: str):
    from torchvision.transforms import v2

    return v2.TrivialAugmentWide() if policy == "trivial_augment" else v2.RandAugment()


@pytest.mark.parametrize("policy", ["trivial_augment", "rand_augment"])
def test_op_tables_are_torchvision_v2s_bit_for_bit(policy):
    """torch's float32 linspace, reproduced exactly: TrivialAugment's Translate bin 15 is 15 px (int of
    15.999999), not 16; Solarize's thresholds are 255 x v2's fractions."""
    ref = _v2(policy)._AUGMENTATION_SPACE
    for h, w in ((64, 96), (61, 97), (224, 224), (331, 500)):
        mine = augmentation_space(policy, h, w)
        assert tuple(mine) == tuple(ref) == OP_NAMES
        for name, (fn, signed) in ref.items():
            values = fn(31, h, w)
            assert mine[name][1] == signed, name
            if values is None:
                assert mine[name][0] is None, name
            elif name == "Solarize":
                assert np.array_equal(mine[name][0], 255.0 * values.numpy().astype(np.float64)), name
            else:
                assert np.array_equal(mine[name][0], values.numpy()), (name, h, w)
    if policy == "trivial_augment":
        assert int(augmentation_space(policy, 8, 8)["TranslateX"][0][15].item()) == 15


def test_linspace32_is_torchs():
    for end in (0.3, 0.99, 32.0, 135.0, *(150 / 331 * w for w in range(1, 400, 7))):
        assert np.array_equal(linspace32(0.0, end, 31), torch.linspace(0.0, end, 31).numpy()), end
    assert np.array_equal(linspace32(1.0, 0.0, 31), torch.linspace(1.0, 0.0, 31).numpy())


GEOMETRIC = ("ShearX", "ShearY", "Rotate")


def _v2_bound(policy: str, name: str, b: int, h: int, w: int) -> float:
    """The largest fraction of pixels that may differ from v2, as V2_MATCH states it."""
    if name not in GEOMETRIC:
        return 0.0
    if name == "Rotate":
        return 0.6 if policy == "trivial_augment" and b == 20 and (h - w) % 2 else 0.03  # bin 20: +-90 degrees
    ties = {"rand_augment": (4, 12, 20, 28), "trivial_augment": (8, 24)}[policy]
    return (0.14 if policy == "rand_augment" else 0.01) if b in ties else 0.0


@pytest.mark.parametrize("policy", ["trivial_augment", "rand_augment"])
def test_kernels_match_torchvision_v2_as_stated(policy):
    """Every op, every bin, both signs, against v2's own op function on uint8 photos (square, odd x even,
    even x even): pixel-equal, or within the bound V2_MATCH states (nearest-neighbour ties)."""
    from _imgs import photo as real_photo
    from torchvision.transforms.v2 import InterpolationMode

    ref = _v2(policy)
    worst = dict.fromkeys(OP_NAMES, 0.0)
    for name_, size in (("chelsea", (64, 48)), ("coffee", (65, 48)), ("astronaut", (48, 48))):
        img = real_photo(name_, size)
        h, w = img.shape[:2]
        t = torch.from_numpy(img).permute(2, 0, 1).contiguous()
        for name in OP_NAMES:
            values, signed = augmentation_space(policy, h, w)[name]
            tv_values = ref._AUGMENTATION_SPACE[name][0](31, h, w)
            bins = [None] if values is None else range(31)
            for b in bins:
                for sign in (1, -1) if signed else (1,):
                    m = 0.0 if b is None else float(values[b]) * sign
                    m_tv = 0.0 if b is None else float(tv_values[b]) * sign
                    want = ref._apply_image_or_video_transform(t, name, m_tv, InterpolationMode.NEAREST, ref._fill)
                    differ = (want.permute(1, 2, 0).numpy() != apply_op(img, name, m)).any(axis=2).mean()
                    assert differ <= _v2_bound(policy, name, b, h, w), (name, b, sign, (h, w), differ)
                    worst[name] = max(worst[name], differ)
    assert {n for n, d in worst.items() if d > 0} <= set(GEOMETRIC)  # the colour ops are pixel-equal
    assert V2_MATCH.keys() == set(OP_NAMES)
    assert all((V2_MATCH[n] == "pixel-equal") == (n not in GEOMETRIC) for n in OP_NAMES)  # the docs say the same
    if policy == "rand_augment":
        assert worst["ShearX"] > 0.05  # the stated ties are real: the test can tell


def test_policies_use_torchvisions_constant_fill_not_the_recipes_border(photo):
    """A user recipe with border: reflect: the policy step still fills with constant 0 (torchvision's),
    unless the step itself sets a border."""
    recipe = parse_recipe("border: reflect\ntrain:\n  - trivial_augment: {}\n  - rotate: {degrees: 10}\n")
    policy, rotate = recipe.build().compose.transforms
    assert (policy.border_mode, policy.fill) == (0, 0) and rotate.border_mode == 4  # others keep reflect
    (label, step), *_ = [e for e in step_extremes(recipe.train[0]) if e[0] == "trivial_augment TranslateX +32"]
    out = load_recipe_from_steps([step], border="reflect").build()(photo, 0)[0]
    assert (out[:, :32] == 0).all() and np.array_equal(out[:, 32:], photo[:, :-32])
    own = parse_recipe("border: constant\ntrain:\n  - trivial_augment: {border: reflect}\n")
    assert own.build().compose.transforms[0].border_mode == 4  # the step's own border wins
    step = [e for e in step_extremes(own.train[0]) if e[0] == "trivial_augment TranslateX +32"][0][1]
    out = load_recipe_from_steps([step], border="constant").build()(photo, 0)[0]
    assert (out[:, :32] != 0).any()  # reflected, not black


def _check_record(policy: str, rec: dict, bin_: int | None, photo) -> None:
    space = augmentation_space(policy, *photo.shape[:2])
    values, signed = space[rec["op"]]
    m = rec["magnitude"]
    if values is None:
        assert m == 0.0
        return
    allowed = values if bin_ is None else values[bin_ : bin_ + 1]
    if rec["op"].startswith("Translate"):
        allowed = np.trunc(allowed)  # whole pixels, as torchvision's int() makes them
    allowed = np.concatenate([allowed, -allowed]) if signed else allowed
    assert np.isclose(allowed, m, atol=1e-5).any(), f"{policy} {rec['op']} magnitude {m} not in its table"


def test_policies_draw_only_listed_ops_within_their_ranges(photo):
    recipe = parse_recipe(POLICY)
    aug = recipe.build()
    seen = {"trivial_augment": set(), "rand_augment": set()}
    for seed in range(250):
        out, applied = aug(photo, seed, fused=False)  # step by step: the records replay it exactly (fused: test_fuse)
        img = photo
        assert [a["op"] for a in applied] == ["trivial_augment", "rand_augment"]
        for a, bin_, n in zip(applied, (None, 9), (1, 2)):
            ops = a["params"]["ops"]
            assert len(ops) == n
            for rec in ops:
                _check_record(a["op"], rec, bin_, photo)
                seen[a["op"]].add(rec["op"])
                img = apply_op(img, rec["op"], rec["magnitude"], border=0, fill=0)
        assert np.array_equal(out, img), "the manifest records must say exactly what was done"
    assert seen["trivial_augment"] == seen["rand_augment"] == set(OP_NAMES)


def test_same_seed_same_pixels_and_seeds_differ(photo):
    recipe = parse_recipe(POLICY)
    first = [recipe.build()(photo, s)[0] for s in range(8)]
    aug = recipe.build()
    for s in (5, 0, 3):
        assert np.array_equal(aug(photo, s)[0], first[s])
    assert len({x.tobytes() for x in first}) == len(first)


def test_rand_augment_parameters_are_strict():
    with pytest.raises(RecipeError, match=r"m: 31 is out of range.*allowed: an integer in \[0, 30\]"):
        parse_recipe("train:\n  - rand_augment: {m: 31}\n")
    with pytest.raises(RecipeError, match=r"unknown parameter 'magnitude' for op 'rand_augment'"):
        parse_recipe("train:\n  - rand_augment: {magnitude: 9}\n")
    with pytest.raises(RecipeError, match=r":2: .*n: 0 is out of range"):
        parse_recipe("train:\n  - rand_augment: {n: 0}\n")
    with pytest.raises(RecipeError, match=r"unknown parameter 'n' for op 'trivial_augment'"):
        parse_recipe("train:\n  - trivial_augment: {n: 2}\n")


def test_extremes_list_every_op_at_its_ends(photo, tmp_path):
    recipe = parse_recipe(POLICY)
    ta, ra = (step_extremes(s) for s in recipe.train)
    # 3 ops without magnitude once, 9 signed ops at -max and +max, Posterize and Solarize at both ends
    assert len(ta) == 3 + 9 * 2 + 2 * 2
    assert len(ra) == 3 + 9 * 2 + 2  # RandAugment: its one bin m
    labels = [label for label, _ in ta]
    assert "trivial_augment Rotate -135" in labels and "trivial_augment Solarize 0" in labels
    for label, step in ta + ra:
        out, applied = load_recipe_from_steps([step]).build()(photo, 0)
        (rec,) = applied[0]["params"]["ops"]
        assert label.split()[1] == rec["op"], label
    src = tmp_path / "cat.png"
    from augkit.io.images import write_image

    write_image(photo, src)
    res = CliRunner().invoke(
        cli.app,
        ["preview", str(src), "--recipe", "trivial", "--extremes", "--cell", "48", "-o", str(tmp_path / "p.png")],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.png").stat().st_size > 1000


def load_recipe_from_steps(steps, border: str = "constant"):
    r = parse_recipe(f"train: [flip]\nborder: {border}\n")
    r.train = steps
    return r


def test_export_reproduces_policies_and_says_what_to_import(photo, tmp_path):
    recipe = parse_recipe(POLICY)
    path = export_albumentations(recipe, tmp_path / "p.json")
    meta = json.loads(path.read_text())["__augkit__"]
    assert meta["import_first"] == ["augkit.recipe.policies.transform"]
    loaded = A.load(str(path))
    aug = recipe.build()
    for seed in range(6):
        seed_random_state(loaded, seed)
        assert np.array_equal(loaded(image=photo)["image"], aug(photo, seed, fused=False)[0])  # fused: test_fuse
    res = CliRunner().invoke(cli.app, ["recipes", "export", "digits-trivial", "-o", str(tmp_path / "d.yaml")])
    assert res.exit_code == 0 and "import augkit.recipe.policies.transform before" in " ".join(res.output.split())


def test_recipes_ops_lists_policies_with_their_ops():
    res = CliRunner(env={"COLUMNS": "400"}).invoke(cli.app, ["recipes", "ops"])
    assert res.exit_code == 0
    for policy in ("trivial_augment", "rand_augment"):
        line = next(ln for ln in res.output.splitlines() if policy in ln)
        assert "ShearX" in line and "Equalize" in line, line
    assert "batch section (train only, per batch): mixup: {alpha: 0.2}, cutmix: {alpha: 1}" in res.output
    from augkit.recipe.ops import get_op
    from augkit.recipe.policies.functional import V2_SUMMARY

    for policy in ("trivial_augment", "rand_augment"):  # the doc `recipes ops` prints states the v2 match
        doc = get_op(policy).doc
        assert V2_SUMMARY in doc and "Border: constant 0 (torchvision's) unless the step sets border/fill" in doc
    assert "Matches torchvision.transforms.v2" in res.output


def test_builtin_policy_recipes():
    digits, trivial = load_recipe("digits"), load_recipe("digits-trivial")
    assert [s.to_yaml() for s in trivial.train[:-1]] == [s.to_yaml() for s in digits.train]
    assert trivial.train[-1].op == "trivial_augment" and trivial.batch is None
    assert load_recipe("digits-mixup").batch is not None
    assert [s.to_yaml() for s in load_recipe("digits-mixup").train] == [s.to_yaml() for s in digits.train]
    assert [s.op for s in load_recipe("trivial").train] == ["flip", "trivial_augment"]


def test_offline_augment_with_a_policy_is_reproducible_and_recorded(tmp_path):
    from _imgs import class_folder

    from augkit.offline.run import AugmentOptions, make_plan, run_plan

    src = class_folder(tmp_path / "src", per_class=2)
    outs = []
    for workers in (1, 2):
        dst = tmp_path / f"w{workers}"
        r = run_plan(make_plan(src, dst, load_recipe("trivial"), AugmentOptions(copies=2, seed=5, workers=workers)))
        assert r.exit_code == 0
        outs.append(
            {
                p.relative_to(dst).as_posix(): p.read_bytes()
                for p in sorted(dst.rglob("*"))
                if p.is_file() and p.suffix in (".jpg", ".png")
            }
        )
        rows = [json.loads(ln) for ln in (dst / "manifest.jsonl").read_text().splitlines()]
        drawn = [
            op for row in rows for t in row["transforms"] if t["op"] == "trivial_augment" for op in t["params"]["ops"]
        ]
        assert len(drawn) == len(rows) and all(d["op"] in OP_NAMES for d in drawn)
    assert outs[0] == outs[1] and len(outs[0]) >= 12
