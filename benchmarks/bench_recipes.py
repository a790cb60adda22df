"""Which recipe and which TTA to start with on digits: the numbers behind the README's guidance
(an accuracy experiment, not a timing benchmark).

Same data, budget and seeds as the quality figures of ``bench_train`` (benchmarks/README.md):
scikit-learn's digits (8x8 upscaled to 32 px), the first 10 images of each class for training
(100), the next 20 of each held out (200); ResNet-18 from scratch (``--weights none``), 20 epochs,
batch 32, lr 2e-3, no validation split, ``last.pt`` scored; seeds 0 and 1. Recipes compared:
``none``, ``digits``, ``digits-trivial`` (digits + TrivialAugment Wide) and ``digits-mixup``
(digits + mixup alpha 0.2 on every batch). Each run is scored plain and with the TTA presets
``shift`` and ``flip`` (``augkit evaluate``; a flip changes what a digit means, so it is the
control that should not help).

``--data faces``: scikit-image's ``lfw_subset`` (100 faces and 100 non-faces, 25x25 gray,
upscaled to 32 px), 20 of each class for training and the other 80 of each held out; compare e.g.
``--recipes none,light,default``.

Run: .venv/bin/python benchmarks/bench_recipes.py [--data digits|faces]
     [--recipes none,digits,digits-trivial,digits-mixup] [--seeds 0,1] [--epochs 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
from bench_train import digits_split  # noqa: E402  (the quality benchmark's data, exactly)

THREADS = 1  # as bench_transfer: two threads on a shared machine were ~10x slower; accuracy does not depend on it
TTAS = ("shift", "flip")


def faces_split(root: Path, per_class: int = 20, size: int = 32) -> Path:
    """root/train/{face,nonface}/*.png (``per_class`` each) and root/test/... (the rest of the 100 each)."""
    import cv2
    import numpy as np
    from skimage.data import lfw_subset

    images = lfw_subset()  # (200, 25, 25) floats in [0, 1]: 100 faces, then 100 non-faces
    for i, img in enumerate(images):
        cls, k = ("face", i) if i < 100 else ("nonface", i - 100)
        g = cv2.resize((img * 255).round().astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)
        out = root / ("train" if k < per_class else "test") / cls / f"{cls}_{k:03d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(str(out), g):
            raise OSError(f"could not write {out}")
    return root


def run_one(data: Path, out: Path, recipe: str, seed: int, args) -> dict:
    from augkit.infer.evaluate import evaluate
    from augkit.training.config import TrainConfig
    from augkit.training.loop import train

    t0 = time.perf_counter()
    train(
        TrainConfig(
            data=data / "train",
            out=out,
            recipe=recipe,
            weights="none",
            epochs=args.epochs,
            batch_size=32,
            lr=2e-3,
            image_size=32,
            val_split=0,
            seed=seed,
            device="cpu",
            workers=0,
            threads=THREADS,
            progress=False,
        )
    )
    row = {"recipe": recipe, "seed": seed, "seconds": round(time.perf_counter() - t0, 1)}
    for tta in TTAS:
        acc = evaluate(out / "last.pt", data / "test", tta=tta, device="cpu", workers=0)["accuracy"]
        row["plain"], row[f"tta_{tta}"] = round(acc["plain"], 4), round(acc["tta"], 4)
    return row


def print_table(rows: list[dict], recipes: list[str]) -> None:
    """Markdown: one row per recipe; per-seed accuracies, then the mean."""
    print("| recipe | plain (seeds, **mean**) | TTA shift | TTA flip |")
    print("| --- | --- | --- | --- |")
    for r in recipes:
        cells = []
        for key in ("plain", "tta_shift", "tta_flip"):
            accs = [x[key] for x in rows if x["recipe"] == r]
            cells.append(" / ".join(f"{a:.1%}" for a in accs) + f", **{sum(accs) / max(1, len(accs)):.1%}**")
        print(f"| `{r}` | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("digits", "faces"), default="digits")
    p.add_argument("--recipes", default="none,digits,digits-trivial,digits-mixup")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    import augkit.infer.evaluate  # noqa: F401  (imported up front: the code measured is the code at the start)
    import augkit.training.loop  # noqa: F401

    recipes = args.recipes.split(",")
    results: dict = {"load_before": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench_recipes_") as tmp:
        data = digits_split(Path(tmp) / "digits", 10, 20) if args.data == "digits" else faces_split(Path(tmp) / "faces")
        for seed in map(int, args.seeds.split(",")):
            for recipe in recipes:
                row = run_one(data, Path(tmp) / f"run_{recipe}_{seed}", recipe, seed, args)
                row["load"] = os.getloadavg()[0]
                results["runs"].append(row)
                print(
                    f"  {recipe:15s} seed {seed}: plain {row['plain']:.1%}, TTA shift {row['tta_shift']:.1%}, "
                    f"TTA flip {row['tta_flip']:.1%} ({row['seconds']:.0f} s)",
                    flush=True,
                )
                if args.json:
                    args.json.write_text(json.dumps(results, indent=2))
    results["load_after"] = os.getloadavg()
    print_table(results["runs"], recipes)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
