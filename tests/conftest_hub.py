"""Helpers for tests that talk to `hubsets serve` with the real, unmodified clients over real HTTP.

The server runs as a separate process (`python -m hubsets.server`), so it can be SIGKILLed and restarted.
`datasets` reads `HF_ENDPOINT` at import time, so dataset-side checks run in a fresh interpreter
(`run_client`) with the environment set before any import; metadata checks use `HfApi(endpoint=...)`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from hubsets.build import build
from hubsets.builder import Options
from hubsets.layout import sha256_file
from hubsets.testing import samples

REPO_ROOT = Path(__file__).resolve().parents[1]


class ServerProcess:
    """`python -m hubsets.server ROOT` on loopback; stderr (the request log) goes to `log_path`."""

    def __init__(self, root: Path, port: int = 0, tokens: Path | None = None, public_url: str | None = None) -> None:
        self.root, self.tokens, self.public_url = root, tokens, public_url
        self.log_path = root.parent / f"{root.name}-server.log"
        args = [sys.executable, "-m", "hubsets.server", str(root), "--port", str(port)]
        if tokens is not None:
            args += ["--tokens", str(tokens)]
        if public_url is not None:  # e.g. a proxy in front, which upload links must then point at
            args += ["--public-url", public_url]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=log, cwd=REPO_ROOT)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("hubsets serve: http://"):
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r}\n{self.log()}")
        self.url = line.split()[2]
        self.port = int(self.url.rsplit(":", 1)[1])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, like a crash or an OOM kill."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def restart(self) -> ServerProcess:
        """A new server process on the same root and port (after `kill` or `stop`)."""
        return ServerProcess(self.root, self.port, self.tokens, self.public_url)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


def client_env(url: str, home: Path, token: str | None = None) -> dict[str, str]:
    """What a user sets to point the stock clients at `hubsets serve`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING_FACE"))}
    env.update(HF_ENDPOINT=url, HF_HUB_DISABLE_XET="1", HF_HOME=str(home), HF_HUB_DISABLE_PROGRESS_BARS="1",
               HF_DATASETS_DISABLE_PROGRESS_BARS="1", TQDM_DISABLE="1")
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def run_client(code: str, env: dict[str, str], timeout: float = 120, transcript: list[str] | None = None,
               **args: Any) -> Any:
    """Run `code` in a fresh interpreter with `ARGS` (= `args`) defined; it must `print(json.dumps(result))`
    last, and that result is returned. Its whole stdout and stderr are appended to `transcript`."""
    program = f"import json\nARGS = json.loads({json.dumps(json.dumps(args))})\n" + textwrap.dedent(code)
    proc = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT)
    if transcript is not None:
        transcript += [proc.stdout, proc.stderr]
    if proc.returncode != 0:
        raise AssertionError(f"client failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


@cache
def _build(root: str, images: int, seed: int) -> Path:
    source, out = Path(root) / f"src-{images}-{seed}", Path(root) / f"skvqa-{images}-{seed}"
    samples.make_skvqa(source, images=images, qa_per_image=3, layout="parquet", files=2, seed=seed)
    build("skvqa", Options(source=source), out, progress=False)
    return out


def built_copy(tmp_path_factory: Any, dest: Path, images: int = 28, seed: int = 0) -> Path:
    """A fresh copy of a real `hubsets build` output (each distinct build is made once per session)."""
    built = _build(str(tmp_path_factory.getbasetemp() / "hub-builds"), images, seed)
    shutil.copytree(built, dest)
    return dest


def manifest(folder: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((folder / "hubsets.json").read_text())
    return data


def config_rows(folder: Path) -> dict[str, int]:
    """Rows per config (train split) as the build recorded them."""
    return {name: c["splits"].get("train", 0) for name, c in manifest(folder)["configs"].items()}


def rewrite_shard(folder: Path, rel: str) -> None:
    """Re-encode one shard (same rows, other compression) and record it in the manifest: a valid change."""
    path = folder / rel
    pq.write_table(pq.read_table(path), path, compression="snappy", row_group_size=2)
    data = manifest(folder)
    data["files"][rel].update(bytes=path.stat().st_size, sha256=sha256_file(path))
    (folder / "hubsets.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def published_files(folder: Path) -> list[Path]:
    """The files a push publishes: everything but dot-files and dot-folders (build staging, caches)."""
    return [p for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)]


def folder_digests(folder: Path) -> dict[str, str]:
    """sha256 of every published file, by repo path (what snapshot_download must reproduce)."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in published_files(folder)}


def partition_rows(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every row of a build by partition folder and split (`data/wit/ir/train`), sorted by id: what must not
    change when only the task slicing (and so the shard files) changes."""
    import pyarrow.parquet as pq

    rows: dict[str, list[dict[str, Any]]] = {}
    for path in sorted((folder / "data").rglob("*.parquet")):
        part = f"{path.parent.relative_to(folder).as_posix()}/{path.name.split('-')[0]}"
        rows.setdefault(part, []).extend(pq.read_table(path).to_pylist())
    return {part: sorted(values, key=lambda r: r["id"]) for part, values in sorted(rows.items())}


S3_BUCKET = "hubsets-test"
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                  "AWS_DEFAULT_REGION": "us-east-1"}


def moto_s3(cache: Path) -> Any:
    """A moto S3 server on 127.0.0.1 with `S3_BUCKET` made, the AWS_* variables (and HUBSETS_CACHE=`cache`)
    set for this process and the processes it spawns; a generator for a fixture: yields the endpoint."""
    import pytest
    import s3fs
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("AWS_ENDPOINT_URL", endpoint)
            for name, value in S3_CREDENTIALS.items():
                env.setenv(name, value)
            env.setenv("HUBSETS_CACHE", str(cache))
            with contextlib.suppress(FileExistsError):  # moto's state outlives a server in this process
                s3fs.S3FileSystem(skip_instance_cache=True).mkdir(S3_BUCKET)
            yield endpoint
    finally:  # also when the generator is closed early
        server.stop()


def s3_objects(prefix: str) -> dict[str, bytes]:
    """Every object under `s3://S3_BUCKET/prefix` by relative path (a fresh client: nothing cached)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    root = f"{S3_BUCKET}/{prefix}"
    return {path.removeprefix(root + "/"): fs.cat_file(path) for path in fs.find(root)}
