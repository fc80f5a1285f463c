"""Malicious archives end to end through the ALLaVA builder (unit tests of the reader: tests/test_archives.py).

Zip (LAION `image_chunks/images_N.zip`) and tar / tar.gz (`--set vflan_images=`) members that escape with
`../`, `..\\` or absolute paths, links, devices, a zip bomb (200 MB of zeros), a bomb with a lying header,
a member over the size cap and a decompression-bomb image (a PNG header claiming 100,000 x 100,000 pixels):
each is refused with a clear reason in the rejects; the safe row is still published; nothing is written
outside the output folder; and the build, in a subprocess under a 3 GB address-space limit, stays far below
the size of the bombs in peak RSS.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest

from hubsets.testing import samples

MB = 1024 * 1024
BOMB_BYTES = 200 * MB
PEAK_RSS_MB = 450
"""A build of these inputs peaks near 210 MB; a decompressed bomb alone would add 200 MB or more."""
CHILD = """
import json, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
from hubsets.build import build
from hubsets.builder import Options
manifest = build("allava", Options(source=Path(sys.argv[1]), settings=json.loads(sys.argv[3])), Path(sys.argv[2]),
                 progress=False)
# VmHWM, not ru_maxrss: the latter keeps the parent's peak across fork + exec (pytest's, here)
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rss_mb": peak_kb / 1024, "by_reason": manifest["rejects"]["by_reason"]}))
"""
JPEG = samples.small_image(np.random.default_rng(1), "JPEG")
PNG = samples.small_image(np.random.default_rng(2), "PNG")
TAG = uuid.uuid4().hex[:12]
"""In the names of escaping members, so that a file they created anywhere would be found."""


def zip_member(zf: zipfile.ZipFile, name: str, data: bytes = b"", *, mode: int = 0o100644) -> None:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = mode << 16
    zf.writestr(info, data)


def zip_bomb(path: Path, name: str) -> None:
    """A zip whose one member is BOMB_BYTES zeros (about 200 KB compressed), written without holding them."""
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w") as member:
            zeros = bytes(MB)
            for _ in range(BOMB_BYTES // MB):
                member.write(zeros)


def lying_copy(bomb: Path, path: Path, old: str, new: str, claimed: int = 100) -> None:
    """`bomb` with its member renamed to `new` (same length) and headers claiming `claimed` uncompressed bytes."""
    raw = bytearray(bomb.read_bytes().replace(old.encode(), new.encode()))
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = raw.find(signature)
        raw[at + size_at:at + size_at + 4] = struct.pack("<I", claimed)
    path.write_bytes(bytes(raw))


def laion_row(number: int, image: str) -> dict:
    return {"id": f"allava_laion_cap_{number}", "image": image,
            "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Fine."}]}


def vflan_row(number: int, image: str) -> dict:
    return {"id": f"allava_vflan_cap_{number}", "image": f"allava_vflan/images/{image}",
            "conversations": [{"from": "human", "value": "<image>\nDescribe."}, {"from": "gpt", "value": "Fine."}]}


def tree(root: Path, skip: Path) -> set[str]:
    """Every path under `root` except those under `skip`."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_relative_to(skip)}


def build_in_child(src: Path, out: Path, settings: dict[str, str]) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), json.dumps(settings)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def check(sandbox: Path, out: Path, before: set[str], result: dict, file: str,
          expected: dict[int, tuple[str, str]]) -> None:
    """Rejects name each refused row with its reason and a clear detail; only the safe row 0 is published;
    nothing appeared outside `out`; peak RSS stayed bounded."""
    rejects = {e["row"]: e for e in map(json.loads, (out / "rejects" / "rejects.jsonl").read_text().splitlines())}
    assert {row: e["reason"] for row, e in rejects.items()} == {row: r for row, (r, _) in expected.items()}
    for row, (_, words) in expected.items():
        assert rejects[row]["file"] == file and words in rejects[row]["detail"], rejects[row]
    manifest = json.loads((out / "hubsets.json").read_text())
    assert sum(c["written"] for c in manifest["origins"].values()) == 1
    assert tree(sandbox, out) == before  # nothing written outside the output folder ...
    assert not list(Path("/").glob(f"*{TAG}*")) and not list(sandbox.parent.glob(f"*{TAG}*"))  # ... nor above it
    assert result["rss_mb"] < PEAK_RSS_MB, result


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.zip"
    zip_bomb(path, "chunk/100004.jpeg")
    return path


def test_malicious_zip_members_are_refused_end_to_end(tmp_path, bomb):
    sandbox = tmp_path / "sandbox"
    src, out = sandbox / "src", sandbox / "out"
    chunks = src / "allava_laion" / "image_chunks"
    chunks.mkdir(parents=True)
    with zipfile.ZipFile(chunks / "images_0.zip", "w") as zf:
        zip_member(zf, "chunk/100000.jpeg", JPEG)
        zip_member(zf, f"../hubsets-evil-{TAG}.jpeg", JPEG)
        zip_member(zf, f"/hubsets-abs-{TAG}.jpeg", JPEG)
        zip_member(zf, f"..\\..\\hubsets-win-{TAG}.jpeg", JPEG)
        zip_member(zf, f"C:/hubsets-drive-{TAG}.jpeg", JPEG)
        zip_member(zf, "chunk/100003.jpeg", b"../../../../etc/passwd", mode=0o120777)  # a symlink
        zip_member(zf, "chunk/100006.png", samples.bomb_png())
    (chunks / "images_1.zip").write_bytes(bomb.read_bytes())
    lying_copy(bomb, chunks / "images_2.zip", "chunk/100004.jpeg", "chunk/100005.jpeg")
    rows = [laion_row(100000, "allava_laion/images/100000.jpeg"),
            laion_row(100001, f"allava_laion/images/hubsets-evil-{TAG}.jpeg"),
            laion_row(100002, f"allava_laion/images/hubsets-abs-{TAG}.jpeg"),
            laion_row(100003, "allava_laion/images/100003.jpeg"),
            laion_row(100004, "allava_laion/images/100004.jpeg"),
            laion_row(100005, "allava_laion/images/100005.jpeg"),
            laion_row(100006, "allava_laion/images/100006.png"),
            laion_row(100007, f"allava_laion/images/hubsets-win-{TAG}.jpeg"),
            laion_row(100008, f"allava_laion/images/hubsets-drive-{TAG}.jpeg")]
    file = "allava_laion/ALLaVA-Caption-LAION-4V.json"
    (src / file).write_text(json.dumps(rows), encoding="utf-8")
    before = tree(sandbox, out)
    result = build_in_child(src, out, {"subsets": "laion"})
    check(sandbox, out, before, result, file, {
        1: ("archive_unsafe_path", "escapes its folder with '..'"),
        2: ("archive_unsafe_path", "is an absolute path"),
        3: ("archive_symlink", "is a symbolic link"),
        4: ("archive_bomb", f"-> {BOMB_BYTES:,} bytes (ratio"),
        5: ("archive_corrupt", "Bad CRC-32"),
        6: ("image_too_large", "decompression bomb"),
        7: ("archive_unsafe_path", "escapes its folder with '..'"),
        8: ("archive_unsafe_path", "is an absolute path"),
    })


class Zeros(io.RawIOBase):
    """`size` zero bytes, read in chunks (so a huge tar member is written without holding it)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def tar_member(tf: tarfile.TarFile, name: str, data: bytes | int = b"", *, kind: bytes = tarfile.REGTYPE,
               link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = kind, link, 1_700_000_000
    if kind == tarfile.REGTYPE:
        info.size = data if isinstance(data, int) else len(data)
        tf.addfile(info, Zeros(data) if isinstance(data, int) else io.BytesIO(data))
    else:
        tf.addfile(info)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_malicious_tar_members_are_refused_end_to_end(tmp_path, suffix):
    sandbox = tmp_path / "sandbox"
    src, out = sandbox / "src", sandbox / "out"
    archive = sandbox / f"image_191-task_1k{suffix}"  # outside the source, as Vision-Flan ships it
    (src / "allava_vflan").mkdir(parents=True)
    top = "images_191task_1k"
    with tarfile.open(archive, "w:gz" if suffix == ".tar.gz" else "w") as tf:
        tar_member(tf, f"{top}/ok.png", PNG)
        tar_member(tf, f"{top}/../../hubsets-evil-{TAG}.png", PNG)
        tar_member(tf, f"/{top}/abs.png", PNG)
        tar_member(tf, f"{top}/link.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
        tar_member(tf, f"{top}/hard.png", kind=tarfile.LNKTYPE, link=f"{top}/ok.png")
        tar_member(tf, f"{top}/fifo.png", kind=tarfile.FIFOTYPE)
        tar_member(tf, f"{top}/device.png", kind=tarfile.CHRTYPE)
        tar_member(tf, f"{top}/bomb.png", samples.bomb_png())
        if suffix == ".tar.gz":  # 300 MB of zeros, ~300 KB on disk: over the 256 MB cap, refused unread
            tar_member(tf, f"{top}/huge.png", 300 * MB)
    rows = [vflan_row(0, f"{top}/ok.png"), vflan_row(1, f"{top}/../../hubsets-evil-{TAG}.png"),
            vflan_row(2, f"{top}/abs.png"), vflan_row(3, f"{top}/link.png"), vflan_row(4, f"{top}/hard.png"),
            vflan_row(5, f"{top}/fifo.png"), vflan_row(6, f"{top}/device.png"), vflan_row(7, f"{top}/bomb.png")]
    expected = {
        1: ("unsafe_path", "escapes its folder with '..'"),
        2: ("archive_unsafe_path", "is an absolute path"),
        3: ("archive_symlink", "is a link to '/etc/passwd'"),
        4: ("archive_symlink", f"is a link to '{top}/ok.png'"),
        5: ("archive_not_a_file", "is not a regular file"),
        6: ("archive_not_a_file", "is not a regular file"),
        7: ("image_too_large", "decompression bomb"),
    }
    if suffix == ".tar.gz":
        rows.append(vflan_row(8, f"{top}/huge.png"))
        expected[8] = ("archive_too_large", "over the 268,435,456-byte cap")
    file = "allava_vflan/ALLaVA-Caption-VFLAN-4V.json"
    (src / file).write_text(json.dumps(rows), encoding="utf-8")
    before = tree(sandbox, out)
    result = build_in_child(src, out, {"subsets": "vflan", "vflan_images": str(archive)})
    check(sandbox, out, before, result, file, expected)
    assert os.path.getsize(archive) < 2 * MB
