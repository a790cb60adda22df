"""--engine ray: byte-identical to --engine local on the samples, resume after a kill, the CLI path,
and a clear message without the extra. One local Ray cluster (2 CPUs) is shared by the module.

Tests that need Ray are marked ``ray`` (``pytest -m "not ray"`` skips them) and skip when Ray
is not installed; the others check what happens without Ray and always run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from _ray import local_ray
from typer.testing import CliRunner

from augkit.cli import app
from augkit.errors import UsageError
from augkit.offline.dst import JOURNAL, MANIFEST
from augkit.offline.executors.local import get_executor
from augkit.offline.run import AugmentOptions, make_plan, run_plan
from augkit.recipe.api import load_recipe

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated:DeprecationWarning")  # Ray Data's own context
SAMPLES = Path(__file__).resolve().parents[1] / "samples"
runner = CliRunner()


def outputs(root: Path) -> dict[str, bytes]:
    """Every file augkit wrote except augkit-run.yaml (it names DST and the engine)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "augkit-run.yaml"
    }


def plan_for(dst: Path, **kw):
    return make_plan(SAMPLES, dst, load_recipe(kw.pop("recipe", "default")), AugmentOptions(**kw))


@pytest.fixture(scope="module")
def ray_cluster():
    with local_ray() as ray:
        yield ray


@pytest.fixture(scope="module")
def local_ref(tmp_path_factory) -> Path:
    """The local engine's output for the samples: 20 originals + 40 augmented copies."""
    dst = tmp_path_factory.mktemp("ref") / "local"
    r = run_plan(plan_for(dst, copies=2, originals=True, seed=7, workers=1))
    assert r.exit_code == 0 and r.written == 60
    return dst


@pytest.mark.ray
def test_ray_equals_local_byte_for_byte(ray_cluster, local_ref, tmp_path):
    dst = tmp_path / "ray"
    ex = get_executor("ray", workers=2)
    r = run_plan(plan_for(dst, copies=2, originals=True, seed=7, engine="ray", workers=2), executor=ex)
    assert r.exit_code == 0 and r.written == 60 and not r.bad
    assert not ex.started  # reused the cluster of this module, left it running
    ref, got = outputs(local_ref), outputs(dst)
    assert sorted(got) == sorted(ref)
    assert [k for k in ref if ref[k] != got[k]] == []  # images, manifest.jsonl, errors.jsonl
    assert len((dst / MANIFEST).read_text().splitlines()) == 60
    assert "engine: ray" in (dst / "augkit-run.yaml").read_text()


@pytest.mark.ray
def test_killed_ray_run_resumes(ray_cluster, local_ref, tmp_path):
    dst = tmp_path / "ray"
    plan = plan_for(dst, copies=2, originals=True, seed=7, engine="ray", workers=2)
    # Make the state a run killed after 25 outputs leaves: files on disk, their rows only in the journal
    # (no manifest yet), the last row torn, a temp file of an unfinished write; then lose 2 finished outputs.
    part = replace(plan, items=plan.items[:25])
    assert run_plan(part, executor=get_executor("ray", workers=2)).written == 25
    rows = (dst / MANIFEST).read_text().splitlines()
    (dst / MANIFEST).unlink()
    (dst / JOURNAL).write_text("\n".join(rows[:24]) + "\n" + rows[24][:20])  # item 24: file without a row
    out30 = dst / plan.items[30].out
    out30.parent.mkdir(parents=True, exist_ok=True)
    temp = out30.parent / f".{out30.name}.0123abcd.tmp"
    temp.write_bytes(b"half")
    for it in (plan.items[3], plan.items[17]):
        (dst / it.out).unlink()
    r = run_plan(plan, executor=get_executor("ray", workers=2))
    # written: 35 never started + 2 lost; already done: 22 journal rows + item 24 recomputed and verified
    assert r.exit_code == 0 and r.written == 37 and r.already_done == 23 and not r.existing, r
    assert not temp.exists() and not (dst / JOURNAL).exists()
    assert outputs(dst) == outputs(local_ref)


@pytest.mark.ray
def test_cli_engine_ray(ray_cluster, tmp_path, monkeypatch):
    # Non-ASCII class and file names travel through Ray Data's Arrow blocks and back unchanged;
    # relative SRC/DST work although Ray's workers do not share our working folder.
    src = tmp_path / "in"
    shutil.copytree(SAMPLES, src, ignore=shutil.ignore_patterns("*.md", "*.py"))
    (src / "cat").rename(src / "chat noir é")
    (src / "coffee" / "coffee_01_full.jpg").rename(src / "coffee" / "café ü 01.jpg")
    monkeypatch.chdir(tmp_path)
    args = ["--per-class", "7", "--format", "png", "--seed", "3", "--workers", "2"]
    res = runner.invoke(app, ["augment", "in", "local", *args, "--engine", "local"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["augment", "in", "ray", *args, "--engine", "ray"])
    assert res.exit_code == 0, res.output
    assert "written" in res.output and "28" in res.output
    got = outputs(tmp_path / "ray")
    assert got == outputs(tmp_path / "local") and "coffee/café ü 01__aug0.png" in got
    assert any(k.startswith("chat noir é/") for k in got)
    res = runner.invoke(app, ["augment", "in", "ray", *args, "--engine", "ray"])  # all done: nothing to run
    assert res.exit_code == 0, res.output
    assert outputs(tmp_path / "ray") == got


@pytest.mark.ray
def test_unreachable_address_is_a_usage_error(ray_cluster, tmp_path, monkeypatch):
    from augkit.offline.executors.ray import RayExecutor

    monkeypatch.setattr(ray_cluster, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_cluster, "init", lambda **kw: (_ for _ in ()).throw(ConnectionError("no cluster")))
    with pytest.raises(UsageError, match="cannot connect to the Ray cluster at auto"):
        run_plan(plan_for(tmp_path / "o", engine="ray"), executor=RayExecutor(address="auto"))


# --- without Ray: these always run ---------------------------------------------------------------------------


def test_missing_extra_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    dst = tmp_path / "o"
    res = runner.invoke(app, ["augment", str(SAMPLES), str(dst), "--engine", "ray"])
    assert res.exit_code == 2, res.output
    assert 'pip install "augkit[ray]"' in res.output
    assert not dst.exists()  # failed before any work


def test_engine_and_address_options_are_checked(tmp_path):
    dst = tmp_path / "o"
    for args, msg in (
        (["--engine", "spark"], "allowed: local, ray"),
        (["--address", "auto"], "--address needs --engine ray"),
        (["--engine", "local", "--address", "ray://head:10001"], "--address needs --engine ray"),
    ):
        res = runner.invoke(app, ["augment", str(SAMPLES), str(dst), *args])
        assert res.exit_code == 2 and msg in res.output, (args, res.output)
    assert not dst.exists()


def test_import_augkit_does_not_import_ray():
    code = "import sys, augkit, augkit.cli, augkit.offline.executors.local; assert 'ray' not in sys.modules, 'ray imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_executors_know_only_tasks_and_items():
    """No executor module imports the augment machinery (it hands them a task and its items)."""
    import ast

    import augkit

    pkg = Path(augkit.__file__).parent
    for name in ("offline/executors/local.py", "offline/executors/ray.py", "offline/executors/pool.py"):
        tree = ast.parse((pkg / name).read_text(encoding="utf-8"))
        mods = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        mods |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in mods if m in ("augkit.offline.run", "augkit.offline.task")}, (name, mods)


def test_ray_engines_share_one_session_helper():
    """augment and predict reach Ray through augkit.ray_session, and no private name of another
    augkit module (RayExecutor._init/_pool before)."""
    import ast

    import augkit

    pkg = Path(augkit.__file__).parent
    for name in ("offline/executors/ray.py", "infer/predict_ray.py"):
        tree = ast.parse((pkg / name).read_text(encoding="utf-8"))
        froms = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
        assert "augkit.ray_session" in {n.module for n in froms}, name
        private = [f"{n.module}.{a.name}" for n in froms for a in n.names if a.name.startswith("_")]
        private += [
            f"{n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in ("_init", "_pool")
        ]
        assert not private, (name, private)
        assert "augkit.offline.executors.ray" not in {n.module for n in froms}, name


class _FakeRay:
    """Just what augkit.ray_session touches, to check its rules without starting Ray."""

    def __init__(self, resources: dict, initialized: bool = False):
        from types import SimpleNamespace

        self.resources, self.initialized, self.calls = resources, initialized, []
        ctx = SimpleNamespace(enable_progress_bars=True, print_on_execution_start=True)
        self.data = SimpleNamespace(DataContext=SimpleNamespace(get_current=lambda: ctx))

    def is_initialized(self) -> bool:
        return self.initialized

    def init(self, **kw) -> None:
        self.calls.append(("init", kw["address"]))

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))

    def cluster_resources(self) -> dict:
        return self.resources


def test_actor_pool_rules():
    from augkit.ray_session import ActorPool, RaySession

    two = RaySession(_FakeRay({"CPU": 2.0}), started=False)
    assert two.actor_pool(100) == ActorPool(2, {"num_cpus": 0.75})  # a little CPU stays free for Ray Data
    assert two.actor_pool(100, workers=1) == ActorPool(1, {"num_cpus": 1.0})
    assert two.actor_pool(1) == ActorPool(1, {"num_cpus": 1.0})  # never more actors than items
    assert two.actor_pool(100, num_cpus=0.5) == ActorPool(2, {"num_cpus": 0.5})
    gpus = RaySession(_FakeRay({"CPU": 8.0, "GPU": 2.0}), started=False)
    assert gpus.gpus() == 2.0 and gpus.actor_pool(10, gpu=True) == ActorPool(2, {"num_gpus": 1, "num_cpus": 1})
    assert gpus.actor_pool(10, workers=3, num_cpus=2, gpu=True) == ActorPool(3, {"num_gpus": 1, "num_cpus": 2})


def test_ray_session_shuts_down_only_what_it_started(monkeypatch):
    import augkit.ray_session as rs

    for initialized, calls in ((False, [("init", "auto"), ("shutdown",)]), (True, [])):
        fake = _FakeRay({"CPU": 2.0}, initialized)
        monkeypatch.setattr(rs, "import_ray", lambda: fake)
        ctx = fake.data.DataContext.get_current()
        with rs.ray_session("auto") as session:
            assert session.started is not initialized and session.ray is fake
            assert not ctx.enable_progress_bars and not ctx.print_on_execution_start  # the CLI draws its own
        assert fake.calls == calls and ctx.enable_progress_bars and ctx.print_on_execution_start


def test_pool_options_are_checked_before_any_work():
    from augkit.ray_session import check_pool_options

    check_pool_options(batch_size=1, num_cpus=None, workers=None)
    for kw, msg in (
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"num_cpus": 0.0}, "num_cpus must be > 0"),
        ({"workers": 0}, "Ray workers must be >= 1"),
    ):
        with pytest.raises(UsageError, match=msg):
            check_pool_options(**{"batch_size": 8, "num_cpus": None, "workers": None, **kw})
