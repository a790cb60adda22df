"""--engine ray vs the local executor on one machine: the ratio, and Ray's fixed start-up cost.

Same images, same recipe, same seed, one run each:
(a) local executor, 2 worker processes (pool start-up included);
(b) ray engine, a local Ray with 2 CPUs, 2 actors: ``ray.init`` is timed on its own, then the
    run; "start-up" is ray.init plus the wait for the first result (actors start, import augkit,
    build the pipeline, finish their first batch).
The outputs of (a) and (b) are compared byte for byte.

Run: .venv/bin/python benchmarks/bench_ray.py [--count 300] [--copies 1]   (needs the ray extra)
A benchmark, never a test.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from photos import make_photos  # noqa: E402

from augkit.offline.executors.local import get_executor  # noqa: E402
from augkit.offline.run import AugmentOptions, make_plan, run_plan  # noqa: E402
from augkit.recipe.api import load_recipe  # noqa: E402


def timed_run(src: Path, dst: Path, recipe, copies: int, engine: str) -> dict:
    plan = make_plan(src, dst, recipe, AugmentOptions(copies=copies, workers=2, engine=engine))
    first: list[float] = []
    t0 = time.perf_counter()
    r = run_plan(
        plan,
        executor=get_executor(engine, workers=2),
        on_progress=lambda res: first or first.append(time.perf_counter()),
    )
    t1 = time.perf_counter()
    assert r.exit_code == 0 and r.written == len(plan.items), r
    n = r.written
    return {"images": n, "wall_s": t1 - t0, "first_result_s": first[0] - t0, "rate": n / (t1 - t0)}


def same_outputs(a: Path, b: Path) -> bool:
    def files(root: Path) -> dict[str, bytes]:
        return {
            p.relative_to(root).as_posix(): p.read_bytes()
            for p in root.rglob("*")
            if p.is_file() and p.name != "augkit-run.yaml"
        }

    return files(a) == files(b)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--copies", type=int, default=1)
    ap.add_argument("--recipe", default="default")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="augkit-bench-ray-"))
    try:
        src = make_photos(tmp / "src", args.count)
        recipe = load_recipe(args.recipe)
        timed_run(src, tmp / "warm", recipe, 1, "local")  # page cache and fork server warm for both engines
        local = timed_run(src, tmp / "local", recipe, args.copies, "local")
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        init_s = time.perf_counter() - t0
        try:
            rayr = timed_run(src, tmp / "ray", recipe, args.copies, "ray")
        finally:
            t0 = time.perf_counter()
            ray.shutdown()
            shutdown_s = time.perf_counter() - t0
        identical = same_outputs(tmp / "local", tmp / "ray")
        ray_total = init_s + rayr["wall_s"]
        fig = {
            "count": args.count,
            "copies": args.copies,
            "cpus": os.cpu_count(),
            "ray": ray.__version__,
            "local": local,
            "ray_run": rayr,
            "ray_init_s": init_s,
            "ray_shutdown_s": shutdown_s,
            "ray_startup_s": init_s + rayr["first_result_s"],
            "ray_total_s": ray_total,
            "ratio_ray_over_local_wall": ray_total / local["wall_s"],
            "ratio_ray_over_local_without_init": rayr["wall_s"] / local["wall_s"],
            "byte_identical": identical,
        }
        print(
            f"images: {args.count} JPEGs 500x375 x {args.copies} copies, recipe {args.recipe}, "
            f"{os.cpu_count()} CPUs, ray {ray.__version__}"
        )
        print(
            f"local, 2 workers:  {local['wall_s']:6.1f} s  ({local['rate']:.1f} img/s; pool start-up included, "
            f"first result after {local['first_result_s']:.1f} s)"
        )
        print(
            f"ray, 2 CPUs:       {ray_total:6.1f} s  = ray.init {init_s:.1f} s + run {rayr['wall_s']:.1f} s, "
            f"of which {rayr['first_result_s']:.1f} s until the first batch came back "
            f"(then shutdown {shutdown_s:.1f} s, not counted)"
        )
        print(f"ray start-up (ray.init + first batch): {fig['ray_startup_s']:.1f} s")
        print(
            f"ray / local wall time: {fig['ratio_ray_over_local_wall']:.2f}x "
            f"({fig['ratio_ray_over_local_without_init']:.2f}x without ray.init)"
        )
        print(f"outputs byte-identical: {identical}")
        if args.json:
            args.json.write_text(json.dumps(fig, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
