"""The Ray runner on a two-node Ray cluster simulated here (`ray.cluster_utils.Cluster`): output identical
to the local runner's.

Skipped when Ray is not installed (`pip install 'hubsets[ray]'`; the `dev` extra includes it), except the
check that a missing Ray is a clear error.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hubsets import registry
from hubsets.build import build
from hubsets.build.ray_runner import run_calls
from hubsets.build.task import Records, run_task
from hubsets.builder import BuildError, Options, Task
from hubsets.settings import bind
from hubsets.testing import samples


@pytest.fixture(scope="module")
def cluster():
    """A Ray cluster of two nodes (a head and a worker node, one CPU each, no dashboard) for the module;
    yields its address. Tasks land on both nodes, which share this machine's filesystem, as nodes of a
    real cluster share an NFS/Lustre mount."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'hubsets[ray]' to test --runner ray")
    import ray
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=1)
    nodes.wait_for_nodes()
    ray.init(address=nodes.address, log_to_driver=False, configure_logging=False)
    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        yield nodes.address
    finally:
        ray.shutdown()
        nodes.shutdown()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray-src")
    samples.make_skvqa(root, images=30, qa_per_image=3, files=5, size=(120, 90))
    return root


@pytest.fixture(scope="module")
def local(source, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ray-local") / "out"
    build("skvqa", Options(source=source), out, progress=False)
    return snapshot(out)


def snapshot(out: Path) -> dict:
    """Manifest (minus provenance), card, rejects and the sha256 of every file under data/."""
    manifest = json.loads((out / "hubsets.json").read_text())
    manifest.pop("provenance")
    shards = {p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted((out / "data").rglob("*.parquet"))}
    return {"manifest": manifest, "card": (out / "README.md").read_text(),
            "rejects": (out / "rejects" / "rejects.jsonl").read_text(), "shards": shards}


def test_ray_build_is_identical_to_local(cluster, source, local, tmp_path):
    out = tmp_path / "out"
    manifest = build("skvqa", Options(source=source), out, runner="ray", progress=False)
    assert manifest["provenance"]["tasks"] == {"tasks": 5, "run": 5, "reused": 0}
    assert local["shards"] and snapshot(out) == local
    again = build("skvqa", Options(source=source), out, runner="ray", progress=False)
    assert again["provenance"]["tasks"]["run"] == 0 and snapshot(out) == local


def test_cli_runner_ray_with_address(cluster, source, local, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "hubsets.cli", "build", "skvqa", "--source", str(source), "--out",
                        str(out), "--runner", "ray", "--address", cluster], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "built skvqa" in r.stdout
    assert snapshot(out) == local


def test_a_failing_task_raises_its_own_error_naming_the_file(cluster, source, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    records = Records(out)
    files = sorted(p.relative_to(source).as_posix() for p in (source / "data").glob("*.parquet"))
    good, other, missing = Task(files[0]), Task(files[1]), Task("data/missing.jsonl")
    done: list[str] = []

    def run(name: str, todo: list[tuple[Task, str]], src: Path = source, limit: int | None = None) -> None:
        options = bind(registry.get(name), Options(source=src))  # as the driver hands them to tasks
        calls = [(name, task, i, options, out, key) for i, (task, key) in enumerate(todo)]
        where = [t.file if t.parts == 1 else f"{t.file} (part {t.part + 1}/{t.parts})" for t, _ in todo]
        run_calls(run_task, calls, where, None, on_done=lambda _: done.append("x"), max_in_flight=limit)

    with pytest.raises(FileNotFoundError) as exc:  # the original type, one line, naming the task's file
        run("skvqa", [(good, "good"), (missing, "missing"), (other, "other")], limit=2)
    assert "data/missing.jsonl" in str(exc.value) and "\n" not in str(exc.value)
    assert records.done("good") and not records.done("missing")  # a task already running still finishes
    with pytest.raises(FileNotFoundError):
        run("skvqa", [(missing, "missing"), (other, "never")], limit=1)
    assert not records.done("never")  # nothing new starts after a failure
    with pytest.raises(KeyError) as key_error:  # a KALE task with none of its planned options
        run("kale", [(Task("data_core_set/shard_000.parquet", part=1, parts=3), "kale")])
    assert "data_core_set/shard_000.parquet (part 2/3)" in str(key_error.value)
    with pytest.raises(BuildError) as unseen:
        run("skvqa", [(good, "elsewhere")], src=tmp_path / "not-shared")
    assert "is not visible on Ray node" in str(unseen.value) and "--source" in str(unseen.value)
    assert not any(".tmp-" in p.name for p in records.root.iterdir())


def test_without_ray_the_error_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(BuildError, match=r"pip install 'hubsets\[ray\]'"):
        run_calls(run_task, [("skvqa",)], ["x"], None)


def test_an_unreachable_address_fails_fast():
    from hubsets.build.ray_runner import _check_reachable

    with pytest.raises(BuildError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        _check_reachable("127.0.0.1:1", timeout=5)
    _check_reachable(None)
    _check_reachable("auto")


def test_ray_build_to_an_object_store_is_identical_to_local(cluster, source, local, tmp_path_factory):
    """--runner ray with --out s3://... (a moto server on loopback): the objects equal a local build's files.
    The Ray workers were started before the AWS_* variables were set, so the endpoint and keys travel as
    --storage-options, pickled with the output to every node."""
    pytest.importorskip("s3fs")
    pytest.importorskip("moto.server")
    from conftest_hub import S3_BUCKET, S3_CREDENTIALS, moto_s3, s3_objects

    server = moto_s3(tmp_path_factory.mktemp("ray-s3-cache"))
    endpoint = next(server)
    try:
        storage = {"endpoint_url": endpoint, "key": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                   "secret": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]}
        manifest = build("skvqa", Options(source=source), f"s3://{S3_BUCKET}/ray", runner="ray", progress=False,
                         storage_options=storage)
        assert manifest["provenance"]["tasks"]["run"] == 5
        objects = s3_objects("ray")
        shards = {k: hashlib.sha256(v).hexdigest() for k, v in sorted(objects.items())
                  if k.startswith("data/") and k.endswith(".parquet")}
        assert shards == local["shards"]
        assert objects["README.md"].decode() == local["card"]
        assert objects["rejects/rejects.jsonl"].decode() == local["rejects"]
        remote = json.loads(objects["hubsets.json"])
        remote.pop("provenance")
        assert remote == local["manifest"]
    finally:
        server.close()


def test_a_folder_one_node_cannot_see_fails_before_any_call(cluster, source, tmp_path):
    """The up-front check runs on every node: a build folder missing there is one line naming the node and
    the fix (here the folder is removed after the options are made, as a node without the mount sees it)."""
    import ray

    from hubsets.build.ray_runner import check_nodes

    assert ray.is_initialized()
    check_nodes(Options(source=source, out=tmp_path), remote_out=True)  # every node sees both: passes
    gone = tmp_path / "cache-on-the-driver-only"
    with pytest.raises(BuildError, match=r"cache folder .* is not visible on Ray node .*HUBSETS_CACHE"):
        check_nodes(Options(source=source, out=gone), remote_out=True)
    with pytest.raises(BuildError, match=r"source folder .* is not visible on Ray node"):
        check_nodes(Options(source=tmp_path / "nowhere", out=tmp_path), remote_out=False)
