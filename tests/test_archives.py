"""Reading archive members in place: junked paths, unsafe members refused with a reason, bomb guards."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from hubsets import archives
from hubsets.archives import ArchiveError, ArchiveIndex, Limits, member_key, unsafe_name


def zip_member(zf: zipfile.ZipFile, name: str, data: bytes, *, stored: bool = False, mode: int = 0o100644) -> None:
    info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    info.create_system = 3
    info.external_attr = mode << 16
    zf.writestr(info, data)


@pytest.fixture
def zips(tmp_path: Path) -> list[Path]:
    a, b = tmp_path / "images_0.zip", tmp_path / "images_1.zip"
    with zipfile.ZipFile(a, "w") as zf:
        zf.writestr(zipfile.ZipInfo("chunk/"), b"")
        zip_member(zf, "chunk/deep/1.jpeg", b"one" * 100)
        zip_member(zf, "chunk/2.png", b"two", stored=True)
        zip_member(zf, "../../etc/3.jpeg", b"evil")
        zip_member(zf, "/abs/4.jpeg", b"abs")
        zip_member(zf, "C:\\win\\5.jpeg", b"drive")
        zip_member(zf, "chunk/6.jpeg", b"target", mode=0o120777)
        zip_member(zf, "chunk/7.jpeg", bytes(3 * 1024 * 1024))  # ratio ~1000: a bomb
    with zipfile.ZipFile(b, "w") as zf:
        zip_member(zf, "other/1.jpeg", b"shadowed")  # same basename as in images_0.zip: first archive wins
        zip_member(zf, "3.jpeg", b"safe three")  # a safe member wins over a refused one of the same key
        zip_member(zf, "9.gif", os.urandom(2048))
    return [a, b]


def test_junk_paths_index_by_basename_and_read_exact_bytes(zips):
    with ArchiveIndex(zips, junk_paths=True) as index:
        assert index.read("1.jpeg") == b"one" * 100
        assert index.read("2.png") == b"two"
        assert index.read("3.jpeg") == b"safe three"
        assert index.where("1.jpeg") == "images_0.zip:chunk/deep/1.jpeg"
        assert index.duplicates == 1
        assert "chunk" not in index and "1.jpeg" in index
        with pytest.raises(KeyError):
            index.read("nothing.jpeg")


@pytest.mark.parametrize(("key", "reason", "words"), [
    ("4.jpeg", "archive_unsafe_path", "absolute"),
    ("5.jpeg", "archive_unsafe_path", "absolute"),
    ("6.jpeg", "archive_symlink", "symbolic link"),
    ("7.jpeg", "archive_bomb", "ratio"),
])
def test_unsafe_members_are_refused_with_a_reason(zips, key, reason, words):
    with ArchiveIndex(zips, junk_paths=True) as index:
        assert key not in index
        with pytest.raises(ArchiveError) as exc:
            index.read(key)
        assert exc.value.reason == reason and words in exc.value.detail


def test_traversal_member_refused_when_no_safe_member_shares_its_key(zips):
    with ArchiveIndex(zips[:1], junk_paths=True) as index:
        with pytest.raises(ArchiveError) as exc:
            index.read("3.jpeg")
        assert exc.value.reason == "archive_unsafe_path" and "'..'" in exc.value.detail


def test_exact_paths_without_junking(zips):
    with ArchiveIndex(zips, junk_paths=False) as index:
        assert index.read("chunk/deep/1.jpeg") == b"one" * 100
        assert index.read("other/1.jpeg") == b"shadowed"
        assert "1.jpeg" not in index


def test_size_cap(zips):
    with ArchiveIndex(zips, junk_paths=True, limits=Limits(max_member_bytes=100)) as index:
        assert index.read("2.png") == b"two"
        assert index.read("1.jpeg") == b"shadowed"  # the 300-byte member is refused, the later one is not
        with pytest.raises(ArchiveError) as exc:
            index.read("9.gif")
        assert exc.value.reason == "archive_too_large"


def test_encrypted_member_is_refused(tmp_path):
    path = tmp_path / "enc.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zip_member(zf, "secret.jpeg", b"secret", stored=True)
    raw = bytearray(path.read_bytes())
    for signature, flags_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # set bit 0 in both headers
        raw[raw.find(signature) + flags_at] |= 0x1
    path.write_bytes(bytes(raw))
    with ArchiveIndex([path]) as index:
        with pytest.raises(ArchiveError) as exc:
            index.read("secret.jpeg")
        assert exc.value.reason == "archive_encrypted"


def test_corrupt_member_data_is_an_archive_error(tmp_path):
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zip_member(zf, "a.bin", b"A" * 50 + b"B" * 50, stored=True)
    raw = bytearray(path.read_bytes())
    at = raw.find(b"AAAA")
    raw[at] = ord("Z")  # the CRC no longer matches
    path.write_bytes(bytes(raw))
    with ArchiveIndex([path]) as index:
        with pytest.raises(ArchiveError) as exc:
            index.read("a.bin")
        assert exc.value.reason == "archive_corrupt"


def test_not_an_archive(tmp_path):
    path = tmp_path / "x.zip"
    path.write_bytes(b"hello, not a zip")
    with pytest.raises(ArchiveError) as exc:
        ArchiveIndex([path])
    assert exc.value.reason == "archive_corrupt"


def tar_member(tf: tarfile.TarFile, name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE,
               link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_tar_members(tmp_path, suffix):
    path = tmp_path / f"images{suffix}"
    with tarfile.open(path, "w:gz" if suffix.endswith("gz") else "w") as tf:
        tar_member(tf, "images/a.jpeg", b"aaa")
        tar_member(tf, "images/../../b.jpeg", b"bbb")
        tar_member(tf, "images/c.jpeg", kind=tarfile.SYMTYPE, link="/etc/passwd")
        tar_member(tf, "images/d.jpeg", kind=tarfile.LNKTYPE, link="images/a.jpeg")
        tar_member(tf, "images/e", kind=tarfile.FIFOTYPE)
    with ArchiveIndex([path], junk_paths=False) as index:
        assert index.read("images/a.jpeg") == b"aaa"
    with ArchiveIndex([path], junk_paths=True) as index:
        assert index.read("a.jpeg") == b"aaa"
        for key, reason in (("b.jpeg", "archive_unsafe_path"), ("c.jpeg", "archive_symlink"),
                            ("d.jpeg", "archive_symlink"), ("e", "archive_not_a_file")):
            with pytest.raises(ArchiveError) as exc:
                index.read(key)
            assert exc.value.reason == reason, key


def test_names_and_keys():
    assert unsafe_name("a/b.jpg") is None
    assert unsafe_name("a/../b.jpg") and unsafe_name("/x") and unsafe_name("\\x") and unsafe_name("D:x")
    assert unsafe_name("a..b/c..jpg") is None
    assert member_key("./a//b/c.jpg", junk_paths=False) == "a/b/c.jpg"
    assert member_key("a\\b\\c.jpg", junk_paths=True) == "c.jpg"


def test_cached_index_is_shared_and_rebuilt_on_change(zips):
    first = archives.cached(zips, junk_paths=True)
    assert archives.cached(zips, junk_paths=True) is first
    assert archives.cached(zips, junk_paths=False) is not first
    with zipfile.ZipFile(zips[1], "a") as zf:
        zip_member(zf, "new.jpeg", b"new")
    os.utime(zips[1], ns=(1, 1))
    second = archives.cached(zips, junk_paths=True)
    assert second is not first and second.read("new.jpeg") == b"new"
