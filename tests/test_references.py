"""Claims checked against their reference: evaluate's scores against scikit-learn, and the
README's transfer-learning rule against the plan augkit makes. (The policy ops are checked against
torchvision v2 in tests/test_policies.py, cutmix against timm in tests/test_batchaug.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from _tinymodel import CLASSES, digit_rgb, make_run, write_png

from augkit.infer.evaluate import evaluate, score
from augkit.recipe.views import preset_views
from augkit.training.freeze import choose_freeze

sk = pytest.importorskip("sklearn.metrics")
KEYS = ("precision", "recall", "f1")


def _sk_macro(y, pred, labels) -> list[float]:
    return list(sk.precision_recall_fscore_support(y, pred, labels=labels, average="macro", zero_division=0)[:3])


def test_score_matches_scikit_learn_for_plain_and_tta_over_all_classes():
    """Five model classes, images of four (class 4 has none, class 3 is never predicted): per-class
    precision/recall/F1 of the TTA and of the plain predictions, and the macro averages over all five
    classes (scikit-learn's labels=all classes) and over the four present."""
    rng = np.random.default_rng(17)
    k, n = 5, 80
    y = rng.integers(0, 4, n)
    views = preset_views("flip")
    logits = rng.normal(size=(len(views), n, k)) + 2.5 * np.eye(k)[y][None]
    logits[:, :, 3] -= 9  # class 3 never predicted
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    probs = probs.astype(np.float32)
    merged = probs.mean(0)
    classes = [f"c{i}" for i in range(k)]
    rep = score(probs, merged, y, views, 0, len(views), classes)
    labels = list(range(k))
    for name, p in (("tta", merged), ("plain", probs[0])):
        pred = p.argmax(1)
        want = sk.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
        pre = "" if name == "tta" else "plain_"
        for row in rep["per_class"]:
            c = classes.index(row["class"])
            got = [row[pre + key] for key in KEYS]
            assert got == pytest.approx([want[0][c], want[1][c], want[2][c]]), (name, row["class"])
        assert [rep["macro"][name][key] for key in KEYS] == pytest.approx(_sk_macro(y, pred, labels))
        present = rep["macro"]["present"][name]
        assert [present[key] for key in KEYS] == pytest.approx(_sk_macro(y, pred, [0, 1, 2, 3]))
    assert rep["macro"]["classes_without_images"] == 1 and "all 5 classes" in rep["macro"]["over"]
    assert rep["macro"]["tta"]["f1"] < rep["macro"]["present"]["tta"]["f1"]  # the absent class counts 0
    assert (probs[0].argmax(1) != merged.argmax(1)).any()  # plain and TTA differ: the test can tell them apart


@pytest.fixture(scope="module")
def run_and_subset(tmp_path_factory, digits):
    """The tiny 3-class digits model, and a folder with images of two of its classes only."""
    images, target = digits
    run = make_run(tmp_path_factory.mktemp("run"), images[30:180], target[30:180])
    root = tmp_path_factory.mktemp("subset")
    for c in (0, 1):
        for i, img in enumerate(images[:30][target[:30] == c][:6]):
            write_png(root / CLASSES[c] / f"{i}.png", digit_rgb(img))
    return run, root


def test_evaluate_on_a_subset_averages_over_all_the_models_classes(run_and_subset):
    run, data = run_and_subset
    rep = evaluate(run, data, tta="flip", device="cpu", workers=0)
    m = np.array(rep["confusion"]["matrix"])
    y = np.repeat(np.arange(3), m.sum(1))
    pred = np.concatenate([np.repeat(np.arange(3), row) for row in m])
    assert [rep["macro"]["tta"][key] for key in KEYS] == pytest.approx(_sk_macro(y, pred, [0, 1, 2]))
    assert [rep["macro"]["present"]["tta"][key] for key in KEYS] == pytest.approx(_sk_macro(y, pred, [0, 1]))
    assert rep["classes"]["missing_from_data"] == ["two"] and rep["macro"]["classes_without_images"] == 1
    assert {"plain_precision", "plain_recall", "plain_f1"} <= set(rep["per_class"][0])


@pytest.mark.parametrize("epochs,warmup", [(1, 0), (2, 1), (3, 1), (5, 1), (8, 2), (10, 2), (20, 4)])
def test_freeze_auto_head_only_epochs_as_the_docs_say(epochs, warmup):
    """docs/training.md: the head alone for the first 20% of the epochs (rounded; at least one when there
    are two epochs or more, none in a one-epoch run, which trains all layers from the start)."""
    plan = choose_freeze("auto", 100, 10, epochs, pretrained=True)
    assert plan.mode == "finetune" and plan.warmup_epochs == warmup
    phases = [plan.phase(e) for e in range(epochs)]
    assert phases.count("head") == warmup and phases[warmup:] == ["all"] * (epochs - warmup)
    if epochs == 1:
        assert "all layers from the first epoch" in plan.describe() and "no head-only epoch" in plan.describe()
    else:
        assert f"head alone for {warmup} epoch(s)" in plan.describe()
