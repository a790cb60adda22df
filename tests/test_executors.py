"""The local executor: small plans stay in-process, larger ones hand over to a pool with the same
outputs, worker failures (exceptions that do not unpickle, a dying worker) never hang the parent,
and neither the parent's augment path nor the pool's fork server imports torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _imgs import class_folder

from augkit.offline.executors.local import LocalExecutor
from augkit.offline.run import AugmentOptions, make_plan, run_plan
from augkit.recipe.api import load_recipe


class Unpicklable(Exception):
    """Pickles, but cannot be rebuilt on the other side (``__init__`` needs two arguments)."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


class FlakyTask:
    """Item 3 raises an exception that does not unpickle; items 5 and 17 kill their pool worker."""

    preload = ()

    def __init__(self, kill: bool = False):
        self.kill, self.parent = kill, os.getpid()  # (a fork server keeps the environment it started with)

    def setup(self) -> None:
        pass

    def __call__(self, item: int) -> dict:
        if item == 3:
            raise Unpicklable("x", "y")
        if item in (5, 17) and self.kill and os.getpid() != self.parent:
            os._exit(7)
        return {"status": "ok", "item": item}


class SlowInParent:
    """Wraps a task: 50 ms more per item in the parent, so that a pool repays itself on a tiny plan (and is up
    before the parent finishes alone, even on a busy machine: a pool took 2 s to start at load 6 on 2 cores)."""

    def __init__(self, task, parent: int):
        self.task, self.parent, self.preload = task, parent, task.preload

    def setup(self) -> None:
        self.task.setup()

    def __call__(self, item) -> dict:
        if os.getpid() == self.parent:
            time.sleep(0.05)
        return self.task(item)


class SlowParentExecutor(LocalExecutor):
    def run(self, task, items):
        return super().run(SlowInParent(task, os.getpid()), items)


def outputs(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in (".jpg", ".png")
    }


def run_with(src, dst, executor, **kw):
    plan = make_plan(src, dst, load_recipe("default"), AugmentOptions(seed=5, **kw))
    return run_plan(plan, executor=executor)


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return class_folder(tmp_path_factory.mktemp("src") / "src", per_class=4)


def test_small_plan_never_starts_a_pool(src, tmp_path):
    ex = LocalExecutor(workers=2)
    r = run_with(src, tmp_path / "d", ex, copies=2)
    assert r.written == 24 and ex.stats == {"in_process": 24, "pool": 0}


def test_handover_to_the_pool_gives_the_same_bytes(src, tmp_path):
    ref = tmp_path / "ref"
    run_with(src, ref, LocalExecutor(workers=1), copies=6)
    eager = SlowParentExecutor(workers=2)
    r = run_with(src, tmp_path / "mixed", eager, copies=6)
    assert r.exit_code == 0 and r.written == 72
    assert eager.stats["in_process"] >= 4 and eager.stats["pool"] > 0, eager.stats
    pooled = LocalExecutor(workers=2, adaptive=False)
    run_with(src, tmp_path / "pool", pooled, copies=6)
    assert pooled.stats == {"in_process": 0, "pool": 72}
    assert outputs(ref) == outputs(tmp_path / "mixed") == outputs(tmp_path / "pool")
    assert (ref / "manifest.jsonl").read_bytes() == (tmp_path / "pool" / "manifest.jsonl").read_bytes()


def test_an_exception_that_does_not_unpickle_is_a_per_item_failure():
    for ex in (LocalExecutor(workers=1), LocalExecutor(workers=2, adaptive=False)):
        res = {r["item"]: r for r in ex.run(FlakyTask(), list(range(8)))}
        assert sorted(res) == list(range(8))
        assert res[3]["status"] == "failed" and "Unpicklable" in res[3]["detail"]
        assert all(res[i]["status"] == "ok" for i in res if i != 3)


def test_a_dying_worker_never_hangs_the_parent():
    ex = LocalExecutor(workers=2, adaptive=False)
    res = list(ex.run(FlakyTask(kill=True), list(range(40))))
    assert sorted(r["item"] for r in res) == list(range(40))  # every item has exactly one result
    status = {r["item"]: (r["status"], r.get("reason")) for r in res}
    assert status[5] == status[17] == ("failed", "worker crashed")  # only the items that kill a worker
    assert status[3] == ("failed", "worker error")
    assert all(status[i] == ("ok", None) for i in range(40) if i not in (3, 5, 17))


PROBE = '''
import sys
from augkit.augment_task import AugmentTask


class Probe:
    """Runs in a pool worker forked from the fork server that preloaded AugmentTask.preload."""

    preload = AugmentTask.preload

    def setup(self):
        pass

    def __call__(self, item):
        return {"status": "ok", "item": item, "torch": "torch" in sys.modules,
                "albumentations": "albumentations" in sys.modules}
'''


def test_augment_imports_no_torch_in_parent_or_workers(src, tmp_path):
    (tmp_path / "probe.py").write_text(PROBE)
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from augkit.augment import augment
        r = augment({str(src)!r}, {str(tmp_path / "out")!r}, "default", copies=1, workers=1)
        assert r.written == 12 and r.exit_code == 0, r
        assert "torch" not in sys.modules, "the parent imported torch"
        from augkit.executors import LocalExecutor
        from probe import Probe
        res = list(LocalExecutor(workers=2, adaptive=False).run(Probe(), list(range(4))))
        assert res and all(r["albumentations"] for r in res), "the fork server did not preload albumentations"
        assert not any(r["torch"] for r in res), "a pool worker imported torch"
        assert "torch" not in sys.modules
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_big_plans_warm_the_fork_server_up_front_small_ones_do_not():
    code = textwrap.dedent("""
        from multiprocessing import forkserver
        from augkit.augment_task import AugmentTask
        from augkit.executors import WARM_ITEMS, LocalExecutor
        server = forkserver._forkserver
        LocalExecutor(workers=2).prepare(AugmentTask.preload, WARM_ITEMS - 1)
        LocalExecutor(workers=1).prepare(AugmentTask.preload, WARM_ITEMS)
        assert server._forkserver_pid is None, "started for a small plan or one worker"
        LocalExecutor(workers=2).prepare(AugmentTask.preload, WARM_ITEMS)
        assert server._forkserver_pid is not None, "not started for a big plan"
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


SLOW = """
import os, sys, time
sys.path.insert(0, {tests!r})
from augkit.executors import LocalExecutor


class Slow:
    preload = ()

    def setup(self):
        pass

    def __call__(self, item):
        time.sleep(0.3)
        return {{"status": "ok", "item": item, "pid": os.getpid()}}


if __name__ == "__main__":
    for res in LocalExecutor(workers=2, adaptive=False).run(Slow(), list(range(200))):
        print(res["pid"], flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_pool_workers_end_when_the_run_is_killed(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW.format(tests=str(Path(__file__).parent)))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    pids = {int(proc.stdout.readline()) for _ in range(6)}
    proc.kill()
    proc.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "pool workers outlived the killed run"


class NoSetupInWorkers(FlakyTask):
    """Its setup fails in pool workers only: the pool never takes an item."""

    def setup(self) -> None:
        if os.getpid() != self.parent:
            raise RuntimeError("no setup here")


def test_a_pool_whose_workers_cannot_start_leaves_the_work_to_this_process():
    ex = LocalExecutor(workers=2, adaptive=False)
    res = list(ex.run(NoSetupInWorkers(), list(range(10))))
    assert sorted(r["item"] for r in res) == list(range(10)) and ex.stats["in_process"] == 10


def test_worker_results_carry_a_typed_status(src, tmp_path):
    import json

    from augkit.offline.executors.result import Status

    seen: list = []
    plan = make_plan(src, tmp_path / "d", load_recipe("default"), AugmentOptions(seed=5))
    assert run_plan(plan, executor=LocalExecutor(workers=1), on_progress=seen.append).written == 12
    assert len(seen) == 12 and all(r["status"] is Status.OK for r in seen)
    (failed,) = LocalExecutor(workers=1).run(FlakyTask(), [3])
    assert failed["status"] is Status.FAILED and failed["reason"] == "worker error"
    assert json.loads(json.dumps({"status": Status.BAD}))["status"] == Status.BAD == "bad"  # across Ray's JSON


def test_chunks_keep_the_copies_of_a_source_together_up_to_twice_the_size():
    from augkit.offline.executors.pool import make_chunks

    items = [(s, k) for s in "abcdef" for k in range(5)]  # 6 sources x 5 copies
    chunks = make_chunks(items, 8, key=lambda it: it[0])
    assert [len(c) for c in chunks] == [10, 10, 10] and sum(chunks, []) == items
    assert all(len({s for s, _ in c}) == 2 for c in chunks)  # no source split between two chunks
    long = [("a", k) for k in range(40)]  # one source, 40 copies: split, or one worker would do it all
    assert [len(c) for c in make_chunks(long, 8, key=lambda it: it[0])] == [16, 16, 8]
    assert make_chunks(items, 8) == [items[i : i + 8] for i in range(0, 30, 8)]  # no key: plain slices
    assert make_chunks(items, 1, key=lambda it: it[0]) == [[it] for it in items]
