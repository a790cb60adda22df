"""Which training defaults to ship (issue 20): augkit's schedules, ``--lr auto`` and ``--ema`` against
augkit's old defaults and a plain one-cycle script, on data that ships with scikit-learn and
scikit-image (an accuracy experiment, not a timing benchmark; run it alone).

Data kinds (``--kinds``): ``digits10`` and ``digits50``: scikit-learn's digits (8x8, upscaled to
32 px), the first 10 / 50 of each class for training and the next 50 of each held out; ``faces``:
scikit-image's ``lfw_subset`` (25x25 gray, upscaled to 32 px), 20 faces and 20 non-faces for training,
the other 160 held out (``bench_recipes.faces_split``); ``photos``: which of five scikit-image colour
photos (astronaut, chelsea, coffee, rocket, immunohistochemistry) a random crop (30-60% of each side,
resized to 48 px) comes from, 20 crops of each to train and 40 held out. ResNet-18 from scratch at 32 px, batch 32,
the same epochs for every contender, seeds 0, 1, 2. Recipes: ``digits`` for digits, ``light`` for
faces, ``default`` for photos (the plain script's hand-written albumentations mirror them).

Contenders (``--contenders``; :data:`CONTENDERS`): each augkit one is ``augkit train`` as a user runs
it (its own validation split, 20% by default, ``best.pt`` scored), changing only the options named;
``plain`` is ``benchmarks/plain_onecycle.py`` (all training images, its last weights scored). Every
model is scored on the held-out images without TTA (``augkit evaluate --tta none``). ``onecycle`` at
1e-3, 3e-3 and 1e-2 are the three hand-picked rates ``onecycle-auto`` is compared with; for each
``--lr auto`` run the sweep's PNG is kept (``--keep DIR``) and the chosen rate's place in the sweep
is recorded (:func:`sweep_place`): ``drop``, how far the loss at the chosen rate has fallen from the
sweep's start towards its lowest point (1 = at the bottom; on a centred average of the raw losses,
which does not lag as the plotted exponential average does), and whether the rate lies in the flat
bottom (the lower half of that fall).

Runs are independent; ``--jobs 2`` runs two at a time (one thread each: accuracy does not depend on
it, the seconds do).

Run: .venv/bin/python benchmarks/bench_defaults.py [--kinds digits10,digits50,faces,photos] [--seeds 0,1,2]
     [--epochs 30] [--contenders old,onecycle,...,plain] [--json out.json] [--keep DIR] [--jobs 2]
Smoke run (end to end, numbers meaningless): --seeds 0 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]
from bench_recipes import faces_split  # noqa: E402
from bench_train import digits_split  # noqa: E402

THREADS = 1  # accuracy does not depend on it; one thread keeps a shared machine's runs comparable
BATCH = 32
#: augkit contenders: TrainConfig options changed from the defaults ("old" is the schedule before issue 20)
CONTENDERS: dict[str, dict] = {
    "old": {"schedule": "cosine-epoch", "lr": 1e-3},
    "onecycle": {"schedule": "onecycle", "lr": 3e-3},
    "onecycle-auto": {"schedule": "onecycle", "lr": "auto"},
    "cosine-warmup": {"schedule": "cosine", "warmup": 1.0, "lr": 3e-3},
    "onecycle-ema": {"schedule": "onecycle", "lr": 3e-3, "ema": 0.999},
    "onecycle-auto-ema": {"schedule": "onecycle", "lr": "auto", "ema": 0.999},
    "onecycle-lr1e-3": {"schedule": "onecycle", "lr": 1e-3},
    "onecycle-lr1e-2": {"schedule": "onecycle", "lr": 1e-2},
}
#: run by default (onecycle-auto-ema only on request)
DEFAULT_CONTENDERS = [
    "old",
    "onecycle",
    "onecycle-lr1e-3",
    "onecycle-lr1e-2",
    "onecycle-auto",
    "cosine-warmup",
    "onecycle-ema",
]
PLAIN = "plain"
KINDS = {"digits10": "digits", "digits50": "digits", "faces": "light", "photos": "default"}  # kind -> recipe
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry")


def photos_split(root: Path, per_class: int = 20, test_per_class: int = 40, size: int = 48) -> Path:
    """root/{train,test}/<photo>/*.png: random crops (30-60% of each side) of five colour photos."""
    import cv2
    import numpy as np
    from skimage import data

    rng = np.random.default_rng(0)
    for name in PHOTOS:
        src = getattr(data, name)()[..., :3]
        h, w = src.shape[:2]
        for i in range(per_class + test_per_class):
            ch, cw = int(h * rng.uniform(0.3, 0.6)), int(w * rng.uniform(0.3, 0.6))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            img = cv2.resize(src[y : y + ch, x : x + cw], (size, size), interpolation=cv2.INTER_AREA)
            out = root / ("train" if i < per_class else "test") / name / f"{name}_{i:03d}.png"
            out.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR)):
                raise OSError(f"could not write {out}")
    return root


def make_data(kind: str, root: Path) -> Path:
    if kind == "digits10":
        return digits_split(root, 10, 50)
    if kind == "digits50":
        return digits_split(root, 50, 50)
    if kind == "photos":
        return photos_split(root)
    return faces_split(root)


def centred(values: list[float], w: int) -> list[float]:
    """A centred moving average over ``w`` values (fewer at the ends): unlike the sweep's exponential
    average it does not lag, so a rate is judged by the losses around it."""
    h = w // 2
    return [sum(values[max(0, i - h) : i + h + 1]) / len(values[max(0, i - h) : i + h + 1]) for i in range(len(values))]


def sweep_place(found: dict) -> dict:
    """Where ``--lr auto``'s choice lies in its own sweep, judged on a centred moving average of the raw
    losses (window: a tenth of the steps, at least 3): ``drop``, how far the loss at the chosen rate has
    fallen from the sweep's start (the first window's mean) towards its lowest point (1 = at the
    bottom), and ``in_flat_bottom``: the chosen rate lies in the lower half of that fall. Also
    ``drop_ema``, the same on the debiased exponential average the sweep's plot draws (it lags)."""
    losses, near = found["losses"], found["index"]
    w = max(3, (len(losses) // 10) | 1)
    c = centred(losses, w)
    start, bottom = sum(losses[:w]) / w, min(c)
    drop = (start - c[near]) / (start - bottom) if start > bottom else 0.0
    sm, low = found["smoothed"], found["minimum"]
    drop_ema = (sm[0] - sm[near]) / (sm[0] - sm[low]) if sm[0] > sm[low] else 0.0
    return {
        "drop": round(drop, 3),
        "drop_ema": round(drop_ema, 3),
        "in_flat_bottom": bool(drop >= 0.5),
        "sweep": {"lrs": found["lrs"], "losses": losses, "chosen": found["lr"], "index": near},
    }


def run_augkit(
    data: Path, out: Path, kind: str, options: dict, seed: int, epochs: int, keep: Path | None = None
) -> dict:
    from augkit.infer.evaluate import evaluate
    from augkit.training.config import TrainConfig
    from augkit.training.loop import train

    t0 = time.perf_counter()
    result = train(
        TrainConfig(
            data=data / "train",
            out=out,
            recipe=KINDS[kind],
            weights="none",
            epochs=epochs,
            batch_size=BATCH,
            image_size=32,
            seed=seed,
            device="cpu",
            workers=0,
            threads=THREADS,
            progress=False,
            **options,
        )
    )
    acc = evaluate(out / "best.pt", data / "test", tta="none", device="cpu", workers=0)["accuracy"]["plain"]
    row = {
        "test_acc": round(acc, 4),
        "seconds": round(time.perf_counter() - t0, 1),
        "lr": result.lr,
        "best_weights": result.best_weights,
        "best_epoch": result.best_epoch,
        "lr_find_steps": result.lr_find["steps"] if result.lr_find else 0,
    }
    if result.lr_find:
        row.update(sweep_place(result.lr_find))
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "lr_find.png", keep / f"lr_find_{kind}_{out.name}.png")
    return row


def run_task(task: tuple) -> dict:
    """One (kind, contender, seed) run, in a worker process of ``--jobs``."""
    kind, c, seed, data, tmp, epochs, keep = task
    if c == PLAIN:
        row = run_plain(data, kind, seed, epochs)
    else:
        row = run_augkit(data, tmp / f"{c}_seed{seed}", kind, CONTENDERS[c], seed, epochs, keep)
    row.update(kind=kind, contender=c, seed=seed, load=os.getloadavg()[0])
    return row


def run_plain(data: Path, kind: str, seed: int, epochs: int) -> dict:
    cmd = [sys.executable, str(HERE / "plain_onecycle.py"), str(data / "train"), str(data / "test")]
    cmd += ["--epochs", str(epochs), "--batch", str(BATCH), "--aug", KINDS[kind], "--seed", str(seed)]
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), NO_ALBUMENTATIONS_UPDATE="1")
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"plain script failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def summarize(rows: list[dict], kinds: list[str], contenders: list[str]) -> dict:
    """Per kind and contender: the accuracies, their mean and standard deviation."""
    out: dict = {}
    for kind in kinds:
        for c in contenders:
            accs = [r["test_acc"] for r in rows if r["kind"] == kind and r["contender"] == c]
            if accs:
                sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
                out.setdefault(kind, {})[c] = {"accs": accs, "mean": statistics.mean(accs), "sd": sd}
    return out


def print_table(summary: dict, contenders: list[str]) -> None:
    """Markdown: one row per contender, one column per data kind: mean +- sd (the seeds' accuracies)."""
    kinds = list(summary)
    print("| contender | " + " | ".join(kinds) + " | mean over kinds |")
    print("| --- |" + " --- |" * (len(kinds) + 1))
    for c in contenders:
        cells, means = [], []
        for k in kinds:
            s = summary[k].get(c)
            if s is None:
                cells.append("-")
                continue
            means.append(s["mean"])
            cells.append(f"**{s['mean']:.1%}** ± {s['sd']:.1%} ({' / '.join(f'{a:.1%}' for a in s['accs'])})")
        overall = f"{statistics.mean(means):.1%}" if means else "-"
        print(f"| `{c}` | " + " | ".join(cells) + f" | {overall} |")
    for k in kinds:
        best = max(summary[k], key=lambda c: summary[k][c]["mean"])
        print(f"{k}: best mean {best} ({summary[k][best]['mean']:.1%})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--contenders", default=",".join([*DEFAULT_CONTENDERS, PLAIN]))
    p.add_argument("--json", type=Path)
    p.add_argument("--keep", type=Path, help="keep each --lr auto sweep's PNG here")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (each one thread)")
    args = p.parse_args()
    kinds, contenders = args.kinds.split(","), args.contenders.split(",")
    unknown = [c for c in contenders if c not in CONTENDERS and c != PLAIN] + [k for k in kinds if k not in KINDS]
    if unknown:
        p.error(f"unknown contender(s)/kind(s): {', '.join(unknown)}")
    import augkit.infer.evaluate  # noqa: F401  (imported up front: the code measured is the code at the start)
    import augkit.training.loop  # noqa: F401

    results: dict = {"epochs": args.epochs, "batch": BATCH, "load_before": os.getloadavg(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="bench_defaults_") as tmp:
        tasks = []
        for kind in kinds:
            data = make_data(kind, Path(tmp) / kind)
            for seed in map(int, args.seeds.split(",")):
                tasks += [(kind, c, seed, data, Path(tmp) / f"runs_{kind}", args.epochs, args.keep) for c in contenders]
        with ProcessPoolExecutor(max(1, args.jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
            for row in pool.map(run_task, tasks):
                results["runs"].append(row)
                c = row["contender"]
                extra = f", lr {row['lr']:.3g}, best.pt {row['best_weights']}" if c != PLAIN else ""
                if "drop" in row:
                    extra += f", sweep drop {row['drop']:.2f}{'' if row['in_flat_bottom'] else ' NOT in flat bottom'}"
                print(
                    f"  {row['kind']:9s} {c:18s} seed {row['seed']}: {row['test_acc']:.1%} ({row['seconds']:.0f} s{extra})",
                    flush=True,
                )
                if args.json:
                    args.json.write_text(json.dumps(results, indent=2))
    results["load_after"] = os.getloadavg()
    results["summary"] = summarize(results["runs"], kinds, contenders)
    print_table(results["summary"], contenders)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
