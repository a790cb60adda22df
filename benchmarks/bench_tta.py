"""Benchmark: what V TTA views cost compared with V plain passes, and proof of one decode per image.

    .venv/bin/python benchmarks/bench_tta.py [--images 64] [--size 112] [--batch-size 32]
    .venv/bin/python benchmarks/bench_tta.py --workers-sweep 0,1,2 --photo-side 2000  # the workers default

For each preset it times, on the same images with the same batch size:

* ``predict`` end to end (decode + resize in the loader, all views through the model) with the
  preset, against ``V`` plain ``predict`` runs (the target is at most 1.1 x V);
* the model part alone (pre-decoded tensors): ``TTAWrapper`` against ``V`` plain forward passes,
  which shows the cost of making the views on the tensors, without the decode savings, both as
  ``predict`` runs it on the CPU (the views' batch in pieces of ``--batch-size`` images) and as a
  single forward pass of all views;
* how many times ``predict`` called the image decoder (it must be once per image).

``--workers-sweep 0,1,2`` instead times ``predict --tta flip`` end to end with each number of
decoding workers (alternating, best of ``--repeats``), on photos whose short side is
``--photo-side`` pixels: the measurement behind :func:`augkit.infer.engine.default_workers`.

The V plain runs and the TTA run alternate, best of ``--repeats`` each, so that other load on
the machine affects both alike.

Images are random crops of scikit-image's public-domain photos, written as JPEGs to a
temporary folder. The model is a randomly initialised resnet18 (speed does not depend on
the weights). Results go to stdout and ``bench_out/bench_tta.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import augkit.infer.engine as inference_mod  # noqa: E402
from augkit.infer.engine import DecodedImages, default_workers, to_model_input  # noqa: E402
from augkit.infer.predict import predict  # noqa: E402
from augkit.infer.tta import TTAWrapper  # noqa: E402
from augkit.io.images import DECODE_POLICY  # noqa: E402
from augkit.io.preprocess import IMAGENET_MEAN, IMAGENET_STD, RESIZE_POLICY  # noqa: E402
from augkit.models.archs import build_model  # noqa: E402
from augkit.models.checkpoint import ModelMeta, load_model, save_checkpoint  # noqa: E402
from augkit.recipe.views import preset_views  # noqa: E402

PRESETS = ("flip", "flip+shift", "ten-crop", "d4")


def make_images(root: Path, n: int, side: int = 256) -> list[Path]:
    from skimage import data

    photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        s = int(rng.integers(min(h, w) // 2, min(h, w)))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        crop = cv2.resize(
            img[y : y + s, x : x + s],
            (side * 4 // 3, side),
            interpolation=cv2.INTER_AREA if side <= s else cv2.INTER_CUBIC,
        )
        p = root / f"img{i:04d}.jpg"
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        p.write_bytes(buf.tobytes())
        paths.append(p)
    return paths


def make_run(root: Path, size: int) -> Path:
    torch.manual_seed(0)
    classes = [f"c{i}" for i in range(10)]
    meta = ModelMeta(
        arch="resnet18",
        classes=classes,
        class_to_idx={c: i for i, c in enumerate(classes)},
        image_size=size,
        mean=list(IMAGENET_MEAN),
        std=list(IMAGENET_STD),
        decode_policy=DECODE_POLICY,
        resize_policy=RESIZE_POLICY,
    )
    save_checkpoint(root / "best.pt", build_model("resnet18", len(classes)), meta)
    return root


def times(fn, n: int):
    def go():
        for _ in range(n):
            fn()

    return go


def alternate_best(*fns, repeats: int) -> list[float]:
    """Best time of each function, measured in turn so that other load on the machine hits all alike."""
    times_ = [[] for _ in fns]
    for _ in range(repeats):
        for fn, t in zip(fns, times_):
            start = time.perf_counter()
            fn()
            t.append(time.perf_counter() - start)
    return [min(t) for t in times_]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=112, help="model input size")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    ap.add_argument("--out", type=Path, default=Path("bench_out/bench_tta.json"))
    ap.add_argument("--workers-sweep", default="", help="e.g. 0,1,2: time predict per worker count instead")
    ap.add_argument("--photo-side", type=int, default=256, help="short side of the test photos")
    args = ap.parse_args(argv)
    if args.workers_sweep:
        return sweep_workers(args)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        paths = make_images(tmp / "img", args.images)
        run = make_run(tmp, args.size)
        common = dict(device="cpu", batch_size=args.batch_size, workers=args.workers)
        predict(run, [tmp / "img"], tta="flip", **common)  # warm-up (allocator, kernels, page cache)

        model, meta = load_model(run)
        ds = DecodedImages([str(p) for p in paths], args.size)
        x = to_model_input(torch.stack([ds[i][1] for i in range(len(ds))]), meta, torch.device("cpu"))
        batches = x.split(args.batch_size)

        def forward(fn):
            def go():
                with torch.inference_mode():
                    for b in batches:
                        fn(b)

            return go

        plain_model = forward(lambda b: torch.softmax(model(b), -1))
        plain_predict = lambda: predict(run, [tmp / "img"], tta=None, **common)  # noqa: E731
        plain_model()
        rows = []
        for name in PRESETS:
            views = preset_views(name)
            v = len(views)
            # V plain passes back to back against one TTA pass: equal lengths see equal interference
            plain_e2e, e2e = alternate_best(
                times(plain_predict, v), lambda: predict(run, [tmp / "img"], tta=name, **common), repeats=args.repeats
            )
            # as predict runs it on the CPU (pieces of batch_size images), and as one forward pass
            plain_fwd, fwd, fwd1 = alternate_best(
                times(plain_model, v),
                forward(TTAWrapper(model, views, max_batch=args.batch_size)),
                forward(TTAWrapper(model, views)),
                repeats=args.repeats,
            )
            plain_e2e, plain_fwd = plain_e2e / v, plain_fwd / v
            calls: list[str] = []
            real = inference_mod.read_image

            def counting(path, **kw):
                calls.append(str(path))
                return real(path, **kw)

            inference_mod.read_image = counting
            try:
                predict(run, [tmp / "img"], tta=name, device="cpu", batch_size=args.batch_size, workers=0)
            finally:
                inference_mod.read_image = real
            rows.append(
                {
                    "preset": name,
                    "views": v,
                    "plain_predict_s": round(plain_e2e, 3),
                    "plain_model_s": round(plain_fwd, 3),
                    "predict_s": round(e2e, 3),
                    "predict_ratio_to_v_plain": round(e2e / (v * plain_e2e), 3),
                    "model_s": round(fwd, 3),
                    "model_ratio_to_v_plain": round(fwd / (v * plain_fwd), 3),
                    "model_one_forward_s": round(fwd1, 3),
                    "model_one_forward_ratio": round(fwd1 / (v * plain_fwd), 3),
                    "decodes": len(calls),
                    "decodes_per_image": len(calls) / len(paths),
                }
            )

    result = {
        "images": args.images,
        "size": args.size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "presets": rows,
    }
    print(
        f"{args.images} images, resnet18 at {args.size}px, batch {args.batch_size}, workers {args.workers}, "
        f"CPU x{os.cpu_count()} ({torch.get_num_threads()} torch threads), best of {args.repeats}"
    )
    print(f"{'':<15}{'--- predict, end to end ---':^35}{'--- model only: pieces of batch | one forward ---':^50}")
    print(
        f"{'preset':<12}{'V':>3}{'V x plain':>11}{'TTA':>9}{'ratio':>8}{'V x plain':>11}{'TTA':>9}{'ratio':>8}"
        f"{'TTA':>9}{'ratio':>8}{'decodes/img':>13}"
    )
    for r in rows:
        v = r["views"]
        print(
            f"{r['preset']:<12}{v:>3}{v * r['plain_predict_s']:>11.3f}{r['predict_s']:>9.3f}"
            f"{r['predict_ratio_to_v_plain']:>8.3f}{v * r['plain_model_s']:>11.3f}{r['model_s']:>9.3f}"
            f"{r['model_ratio_to_v_plain']:>8.3f}{r['model_one_forward_s']:>9.3f}"
            f"{r['model_one_forward_ratio']:>8.3f}{r['decodes_per_image']:>13.2f}"
        )
    ok = all(r["predict_ratio_to_v_plain"] <= 1.1 and r["decodes_per_image"] == 1 for r in rows)
    print("target (predict <= 1.1 x V x plain, one decode per image):", "met" if ok else "NOT met")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ok else 1


def sweep_workers(args) -> int:
    """predict (flip TTA) end to end per worker count, alternating, best of ``--repeats``."""
    counts = [int(w) for w in args.workers_sweep.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "img").mkdir()
        make_images(tmp / "img", args.images, args.photo_side)
        run = make_run(tmp, args.size)
        runs = [
            lambda w=w: predict(run, [tmp / "img"], tta="flip", device="cpu", batch_size=args.batch_size, workers=w)
            for w in counts
        ]
        runs[0]()  # warm-up
        best = alternate_best(*runs, repeats=args.repeats)
    rows = [
        {"workers": w, "seconds": round(t, 3), "img_per_s": round(args.images / t, 1)} for w, t in zip(counts, best)
    ]
    print(
        f"predict --tta flip, {args.images} photos (short side {args.photo_side}) at {args.size}px, "
        f"{os.cpu_count()} CPUs, default workers here: {default_workers('cpu')}"
    )
    for r in rows:
        print(f"  workers {r['workers']}: {r['seconds']:.3f} s, {r['img_per_s']} img/s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "workers_sweep": rows,
                "images": args.images,
                "size": args.size,
                "photo_side": args.photo_side,
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
