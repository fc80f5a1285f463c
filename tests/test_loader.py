"""hubsets.loader end to end: batches, projection, order, exact elastic resume, skipping, workers, shutdown."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from loader_fixtures import corrupt_zoo, embedding, photo_jpeg, record, simple_repo, write_repo
from torch.utils.data import get_worker_info

import hubsets
from hubsets.loader import merge_states
from hubsets.loader.source import Source

IDS_ROWS = 1000


@pytest.fixture(scope="module")
def toy_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 rows with small JPEGs (some rows with two images, some with none), many files and row groups."""
    images = [photo_jpeg(40 + 8 * k, 30 + 4 * k, k) for k in range(5)]

    def row_images(i: int) -> list[bytes]:
        return [] if i % 17 == 0 else images[i % 5:i % 5 + 1 + (i % 7 == 0)]

    return simple_repo(tmp_path_factory.mktemp("toy"), 300, images=row_images, row_group_size=16,
                       rows_per_file=40)


@pytest.fixture(scope="module")
def ids_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1000 image-less rows: resume and order tests need ids, not pixels."""
    return simple_repo(tmp_path_factory.mktemp("ids"), IDS_ROWS, row_group_size=32, rows_per_file=200)


def all_ids(repo: Path, config: str = "default") -> list[str]:
    return sorted(i for b in hubsets.loader(repo, config, columns=["id"], shuffle=False, batch_size=256)
                  for i in b["id"])


def ids_of(loader: Any, limit: int | None = None) -> list[str]:
    """The ids of the batches received, stopping right after the `limit`-th (never asking for one more)."""
    out: list[str] = []
    for number, batch in enumerate(loader, start=1):
        out.extend(batch["id"])
        if number == limit:
            break
    return out


def test_batch_format(toy_repo: Path) -> None:
    batch = next(iter(hubsets.loader(toy_repo, batch_size=8, image_size=24)))
    assert len(batch["id"]) == 8
    assert batch["pixel_values"].dtype == torch.uint8
    assert batch["pixel_values"].shape == (int(batch["num_images"].sum()), 3, 24, 24)
    assert batch["num_images"].dtype == torch.long and batch["num_images"].shape == (8,)
    for name in ("dataset", "origin", "messages", "context", "caption", "image_urls", "meta"):
        assert len(batch[name]) == 8, name
    assert isinstance(batch["meta"][0], dict) and "index" in batch["meta"][0]
    assert batch["messages"][0][0]["content"][0]["type"] == "image"
    assert "images" not in batch


def test_module_is_callable_and_lazy() -> None:
    assert callable(hubsets.loader) and hubsets.mix is hubsets.loader.mix


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "int32"])
def test_embeddings_keep_their_stored_dtype(tmp_path: Path, dtype: str) -> None:
    values = [np.arange(6, dtype=np.float32).reshape(2, 3) * (i + 1) / 2 for i in range(10)]
    rows = [record("synth2", "coco", i, embedding=embedding(v, dtype)) for i, v in enumerate(values)]
    repo = write_repo(tmp_path, {"data/coco/none/train": rows}, {"default": {"train": ["data/*/*/*.parquet"]}})
    batch = next(iter(hubsets.loader(repo, batch_size=10, shuffle=False)))
    tensor = batch["image_embedding"]
    assert tensor.dtype == getattr(torch, dtype) and tensor.shape == (10, 2, 3)
    expected = torch.tensor(np.stack(values)).to(tensor.dtype)
    assert torch.equal(tensor, expected)


@pytest.mark.parametrize("encoding", ["plain", "dictionary"])
def test_image_bytes_plain_or_dictionary_encoded(tmp_path: Path, encoding: str) -> None:
    """hubsets' writer dictionary-encodes image bytes (rows repeating an image store it once); other
    writers store them plain. Both must give every row its own image."""
    from hubsets.loader.decode import DecodeOptions, decode

    photos = [photo_jpeg(40, 30, k) for k in range(4)]
    rows = [record("skvqa", "laion", i, [photos[i // 3 % 4]]) for i in range(36)]  # 3 QA rows per image
    repo = write_repo(tmp_path, {"data/laion/none/train": rows}, {"default": {"train": ["data/*/*/*.parquet"]}},
                      use_dictionary=encoding == "dictionary")
    batch = next(iter(hubsets.loader(repo, batch_size=36, image_size=16)))
    for index, row_id in enumerate(batch["id"]):
        expected = decode(photos[int(row_id.rsplit("/", 1)[1]) // 3 % 4], DecodeOptions(image_size=16))
        assert torch.equal(batch["pixel_values"][index], expected)


def test_only_requested_columns_are_read(toy_repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[tuple[str, ...]] = []
    original = Source.read_unit

    def spy(self: Source, unit: int, columns: Any) -> Any:
        read.append(tuple(columns))
        return original(self, unit, columns)

    monkeypatch.setattr(Source, "read_unit", spy)
    batch = next(iter(hubsets.loader(toy_repo, columns=["caption"], batch_size=4)))
    assert set(batch) == {"id", "caption"}
    assert read and all(columns == ("id", "caption") for columns in read)


def test_each_epoch_delivers_every_row_once_in_a_new_order(ids_repo: Path) -> None:
    expected = all_ids(ids_repo)
    loader = hubsets.loader(ids_repo, columns=["id"], batch_size=32, seed=7)
    first, second = ids_of(loader), ids_of(loader)
    assert sorted(first) == expected and sorted(second) == expected
    assert first != second and loader.epoch == 1
    again = hubsets.loader(ids_repo, columns=["id"], batch_size=50, seed=7)
    assert ids_of(again) == first  # same seed and epoch, another batch size: same order
    other = hubsets.loader(ids_repo, columns=["id"], batch_size=32, seed=8)
    assert ids_of(other) != first
    loader.set_epoch(0)
    assert ids_of(loader) == first


def test_workers_and_ranks_share_one_global_order(ids_repo: Path) -> None:
    order = ids_of(hubsets.loader(ids_repo, columns=["id"], batch_size=32))
    with_workers = ids_of(hubsets.loader(ids_repo, columns=["id"], batch_size=32, num_workers=2))
    assert sorted(with_workers) == sorted(order)
    ranks = [ids_of(hubsets.loader(ids_repo, columns=["id"], batch_size=32, rank=r, world_size=3))
             for r in range(3)]
    assert ranks[0] + ranks[1] + ranks[2] == order  # each rank takes a contiguous share of the order


def consume(loader: Any, batches: int) -> list[str]:
    return ids_of(loader, limit=batches)


@pytest.mark.parametrize(("before", "after"), [(0, 0), (0, 2), (2, 0), (2, 2)])
def test_resume_is_exact_across_worker_counts(ids_repo: Path, before: int, after: int) -> None:
    options = {"columns": ["id"], "batch_size": 32, "seed": 1}
    full = ids_of(hubsets.loader(ids_repo, **options))
    first_loader = hubsets.loader(ids_repo, num_workers=before, prefetch_factor=4 if before else None, **options)
    first = consume(first_loader, 5)
    state = first_loader.state_dict()
    resumed = hubsets.loader(ids_repo, num_workers=after, **options)
    resumed.load_state_dict(state)
    rest = ids_of(resumed)
    assert len(first) == 5 * 32
    assert sorted(first + rest) == sorted(full) and len(set(first + rest)) == IDS_ROWS
    if before == after == 0:
        assert first + rest == full
    assert resumed.epoch == 0
    assert sorted(ids_of(resumed)) == sorted(full)  # then the next epoch, whole


@pytest.mark.parametrize(("world_before", "world_after", "workers_after"), [(2, 3, 0), (3, 2, 2), (1, 4, 0)])
def test_elastic_resume_across_world_sizes(ids_repo: Path, world_before: int, world_after: int,
                                           workers_after: int) -> None:
    options = {"columns": ["id"], "batch_size": 16, "seed": 5}
    seen: list[str] = []
    states = []
    for rank in range(world_before):
        loader = hubsets.loader(ids_repo, rank=rank, world_size=world_before, **options)
        seen += consume(loader, 2 + rank)  # ranks need not be in step
        states.append(loader.state_dict())
    merged = merge_states(states)
    for rank in range(world_after):
        loader = hubsets.loader(ids_repo, rank=rank, world_size=world_after, num_workers=workers_after, **options)
        loader.load_state_dict(merged)
        seen += ids_of(loader)
    assert len(seen) == IDS_ROWS and sorted(seen) == all_ids(ids_repo)


def _distributed_rank(rank: int, world: int, init: str, repo: str, out: str) -> None:
    """One rank of a gloo group: read a few batches, then take the (gathered) state."""
    import json

    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        loader = hubsets.loader(repo, columns=["id"], batch_size=16)  # rank and world from torch.distributed
        seen = consume(loader, 2 + rank)
        state = loader.state_dict()
        Path(out, f"{rank}.json").write_text(json.dumps({"seen": seen, "state": state}))
    finally:
        torch.distributed.destroy_process_group()


def test_state_dict_gathers_all_ranks_under_torch_distributed(ids_repo: Path, tmp_path: Path) -> None:
    import json

    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_distributed_rank, args=(2, init, str(ids_repo), str(tmp_path)), nprocs=2, join=True)
    results = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert results[0]["state"] == results[1]["state"] and results[0]["state"]["ranks"] == [0, 1]
    resumed = hubsets.loader(ids_repo, columns=["id"], batch_size=16, rank=0, world_size=1)
    resumed.load_state_dict(results[0]["state"])
    seen = results[0]["seen"] + results[1]["seen"] + ids_of(resumed)
    assert sorted(seen) == all_ids(ids_repo)


def test_drop_last_gives_ranks_equal_full_batches(ids_repo: Path) -> None:
    counts = set()
    for rank in range(3):
        loader = hubsets.loader(ids_repo, columns=["id"], batch_size=24, rank=rank, world_size=3, num_workers=2,
                                drop_last=True)
        batches = [len(b["id"]) for b in loader]
        assert set(batches) == {24} and len(batches) == len(loader)
        counts.add(len(batches))
    assert counts == {IDS_ROWS // 3 // 24}


def test_per_rank_state_resumes_the_same_rank_and_refuses_others(ids_repo: Path) -> None:
    options = {"columns": ["id"], "batch_size": 16}
    loader = hubsets.loader(ids_repo, rank=1, world_size=2, **options)
    first = consume(loader, 3)
    state = loader.state_dict()
    again = hubsets.loader(ids_repo, rank=1, world_size=2, **options)
    again.load_state_dict(state)
    whole = ids_of(hubsets.loader(ids_repo, rank=1, world_size=2, **options))
    assert first + ids_of(again) == whole
    with pytest.raises(ValueError, match="merge_states"):
        hubsets.loader(ids_repo, rank=0, world_size=2, **options).load_state_dict(state)
    with pytest.raises(ValueError, match="different data"):
        hubsets.loader(ids_repo, seed=99, rank=1, world_size=2, **options).load_state_dict(state)


def test_break_then_iterate_again_continues_the_epoch(ids_repo: Path) -> None:
    loader = hubsets.loader(ids_repo, columns=["id"], batch_size=32, num_workers=2, persistent_workers=True)
    with loader:
        first = consume(loader, 4)
        rest = ids_of(loader)
        assert sorted(first + rest) == all_ids(ids_repo)
        nxt = ids_of(loader)
        assert sorted(nxt) == all_ids(ids_repo) and nxt != first + rest and loader.epoch == 1


def test_a_state_of_many_fragments_resumes_exactly(ids_repo: Path) -> None:
    """Positions left by many ranks and workers arrive as a long interval list (beyond the job board's
    first capacity); exactly those positions are delivered, in order."""
    options = {"columns": ["id"], "batch_size": 32}
    order = ids_of(hubsets.loader(ids_repo, **options))
    fragments = [(start, start + 2) for start in range(0, IDS_ROWS, 5)]
    loader = hubsets.loader(ids_repo, num_workers=2, **options)
    state = loader.state_dict() | {"remaining": [list(f) for f in fragments]}
    loader.load_state_dict(state)
    assert len(loader) == 13  # 400 positions: 12 whole batches shared by the workers, then one of 16
    expected = [order[p] for a, b in fragments for p in range(a, b)]
    assert sorted(ids_of(loader)) == sorted(expected)
    single = hubsets.loader(ids_repo, **options)
    single.load_state_dict(state)
    assert len(single) == -(-len(expected) // 32) and ids_of(single) == expected


def test_prefetched_batches_are_not_counted(ids_repo: Path) -> None:
    loader = hubsets.loader(ids_repo, columns=["id"], batch_size=10, num_workers=2, prefetch_factor=8)
    iterator = iter(loader)
    next(iterator)
    time.sleep(0.5)  # let the workers prefetch
    remaining = loader.state_dict()["remaining"]
    assert sum(b - a for a, b in remaining) == IDS_ROWS - 10
    del iterator


@pytest.fixture(scope="module")
def corrupt_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Counter[str], int]:
    bad = corrupt_zoo()
    good = photo_jpeg(48, 40, 9)
    rows, reasons = [], Counter[str]()
    for i in range(120):
        name = sorted(bad)[i // 8 % len(bad)] if i % 8 == 3 else None
        rows.append(record("toy", "laion", i, [good, bad[name][0]] if name else [good]))
        if name:
            reasons[bad[name][1]] += 1
    rows[5]["images"].append({"bytes": None, "path": "elsewhere.jpg"})  # referenced, not embedded
    reasons["image_not_embedded"] += 1
    root = tmp_path_factory.mktemp("corrupt")
    write_repo(root, {"data/laion/none/train": rows}, {"default": {"train": ["data/*/*/*.parquet"]}})
    return root, reasons, 120 - sum(reasons.values())


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_and_oversized_images_skip_their_row(corrupt_repo: tuple[Path, Counter[str], int], workers: int,
                                                     caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from hubsets.loader import collate, stream

    monkeypatch.setattr(stream, "warn", collate.RateLimitedLog(burst=5))
    root, reasons, good_rows = corrupt_repo
    loader = hubsets.loader(root, batch_size=16, image_size=16, num_workers=workers)
    with caplog.at_level(logging.WARNING, logger="hubsets.loader"):
        batches = list(loader)
    assert sum(len(b["id"]) for b in batches) == good_rows
    assert len(batches) == -(-120 // 16)  # a skipped row leaves its batch short; later batches do not shift
    assert loader.stats["skipped"] == dict(reasons)
    assert loader.stats["rows"] == good_rows and loader.stats["skipped_rows"] == sum(reasons.values())
    if workers == 0:  # worker processes log to their own stderr
        assert len(caplog.messages) == 5  # rate limited: 5 of the 16 bad rows
        assert all(m.startswith("hubsets.loader: skipping row 'toy/laion/") for m in caplog.messages)


def tag_worker(batch: dict[str, Any]) -> dict[str, Any]:
    info = get_worker_info()
    batch["worker"] = info.id if info is not None else -1
    return batch


def test_no_worker_idles_when_workers_outnumber_files(tmp_path: Path) -> None:
    rows = [record("toy", "laion", i) for i in range(96)]
    repo = write_repo(tmp_path, {"data/laion/none/train": rows}, {"default": {"train": ["data/*/*/*.parquet"]}},
                      row_group_size=12)
    assert len(list(tmp_path.rglob("*.parquet"))) == 1  # one file, eight row groups, two workers
    loader = hubsets.loader(repo, columns=["id"], batch_size=8, num_workers=2, transform=tag_worker)
    workers = Counter(b["worker"] for b in loader)
    assert workers == {0: 6, 1: 6}


def test_workers_stop_after_break(toy_repo: Path) -> None:
    loader = hubsets.loader(toy_repo, batch_size=4, image_size=16, num_workers=2)
    for _ in loader:
        break
    assert no_children_left()


def no_children_left(timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not multiprocessing.active_children()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settled_fds(at_most: int, patience: float = 3.0) -> int:
    """Open descriptors once workers that just ended have closed their pipes (torn down asynchronously, so
    a count taken at once can hold one or two of them): the first count <= `at_most`, else the last."""
    deadline = time.monotonic() + patience
    while (count := open_fds()) > at_most and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


@pytest.mark.parametrize("persistent", [False, True])
def test_no_file_descriptor_leak_over_epochs(toy_repo: Path, persistent: bool) -> None:
    """Shared-memory slots fill up over the first epochs (a bounded pool: +3 fds by epoch 5 here), then the
    count stays flat: a leak would add descriptors every epoch."""
    loader = hubsets.loader(toy_repo, batch_size=32, image_size=16, num_workers=2, persistent_workers=persistent)
    for _ in range(6):
        ids_of(loader)
    before = open_fds()
    orders = [ids_of(loader) for _ in range(8)]
    assert settled_fds(before + 1) <= before + 1
    assert len({tuple(o) for o in orders}) == 8 and all(len(o) == 300 for o in orders)
    loader.close()
    assert no_children_left()


def images_by_id(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Each row's images: a view of the batch's `pixel_values` (not a copy)."""
    starts = [0, *torch.cumsum(batch["num_images"], 0).tolist()]
    return {row: batch["pixel_values"][a:b] for row, a, b in zip(batch["id"], starts, starts[1:], strict=False)}


def test_batches_held_by_the_user_are_never_overwritten(toy_repo: Path) -> None:
    """Workers decode into the shared memory of batches the user has dropped (slots.py). Batches kept (here
    three epochs, more than the slots, and an epoch cut short) must keep their pixels."""
    options: dict[str, Any] = {"batch_size": 8, "image_size": 16}
    expected = {row: images.clone() for b in hubsets.loader(toy_repo, **options)
                for row, images in images_by_id(b).items()}
    loader = hubsets.loader(toy_repo, num_workers=2, persistent_workers=True, **options)
    with loader:
        held = [b for b in loader]
        held += [b for _, b in zip(range(5), loader, strict=False)]
        held += [b for _ in range(2) for b in loader]  # the rest of that epoch, then a whole one
    assert sum(len(b["id"]) for b in held) == 3 * 300
    in_slots = [b for b in held if not b["pixel_values"].is_shared()]  # the others: fresh segments, slots full
    assert 0 < len(in_slots) < len(held)
    for batch in held:
        for row, images in images_by_id(batch).items():
            assert torch.equal(images, expected[row]), row


def test_workers_reuse_the_memory_of_dropped_batches(tmp_path: Path) -> None:
    photo = photo_jpeg(48, 40, 3)
    repo = simple_repo(tmp_path, 256, images=lambda i: [photo], row_group_size=32)
    options: dict[str, Any] = {"batch_size": 8, "image_size": 16}
    reference = next(iter(hubsets.loader(repo, **options)))["pixel_values"][0]
    loader = hubsets.loader(repo, num_workers=2, persistent_workers=True, **options)
    pointers: Counter[int] = Counter()
    with loader:
        for number in range(8):
            for index, batch in enumerate(loader):
                assert not batch["pixel_values"].is_shared()  # in a slot, not in a fresh segment
                assert batch["num_images"].dtype == torch.long and batch["num_images"].tolist() == [1] * 8
                pointers[batch["pixel_values"].data_ptr()] += 1
                assert all(torch.equal(image, reference) for image in batch["pixel_values"])
                if number % 2 and index == 3:  # prefetched batches are dropped: their slots come back
                    break
    assert sum(pointers.values()) == 4 * 32 + 4  # the last pass stops after 4 batches
    assert len(pointers) <= 2 * loader._slot_count  # each worker's few slots, over and over


def test_reader_reads_offsets_and_validity_off_the_buffers() -> None:
    """Not through `to_numpy` / `pa.array`, which import pandas in every new worker; sliced arrays included."""
    import pyarrow as pa

    from hubsets.loader.reader import indices, numeric, valid

    numbers = pa.array([1, None, 3, 4, None, 6, 7, 8, 9, 10], type=pa.int32()).slice(1, 8)
    assert valid(numbers).tolist() == numbers.is_valid().to_pylist()
    assert numeric(numbers)[valid(numbers)].tolist() == [v for v in numbers.to_pylist() if v is not None]
    lists = pa.array([[1], None, [2, 3], [], None], type=pa.list_(pa.int8())).slice(1, 3)
    assert numeric(lists.offsets).tolist() == lists.offsets.to_pylist()
    assert valid(lists).tolist() == [False, True, True]
    assert valid(pa.array([[1]]).slice(0)).tolist() == [True]
    assert indices([3, 1, 2]).to_pylist() == [3, 1, 2] and indices([]).to_pylist() == []


def test_shared_pixels_are_copied_when_the_batch_is_sent_on(tmp_path: Path) -> None:
    """A batch passed to another process travels in a new segment, so the worker may reuse its slot."""
    from multiprocessing.reduction import ForkingPickler

    photo = photo_jpeg(48, 40, 3)
    repo = simple_repo(tmp_path, 64, images=lambda i: [photo], row_group_size=32)
    with hubsets.loader(repo, batch_size=8, image_size=16, num_workers=2, persistent_workers=True) as loader:
        batch = next(iter(loader))
        pixels = batch["pixel_values"]
        pointer = pixels.data_ptr()
        ForkingPickler.dumps(pixels)
        assert pixels.is_shared() and pixels.data_ptr() != pointer


@pytest.fixture(scope="module")
def mix_repos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    a = simple_repo(tmp_path_factory.mktemp("mixa"), 6000, row_group_size=250, rows_per_file=2000, dataset="alpha")
    b = simple_repo(tmp_path_factory.mktemp("mixb"), 3000, row_group_size=250, rows_per_file=1500, dataset="beta")
    return a, b


def across_epochs(loader: Any, batches: int) -> list[str]:
    out: list[str] = []
    while len(out) < batches * loader._spec.batch_size:
        out += ids_of(loader, limit=batches - len(out) // loader._spec.batch_size)
    return out


def test_mix_honours_weights_within_two_percent(mix_repos: tuple[Path, Path]) -> None:
    a, b = mix_repos
    mixed = hubsets.mix({(a, "default"): 0.7, (b, "clean"): 0.3}, columns=["id"], batch_size=100)
    ids = across_epochs(mixed, 100)[:10_000]  # 'clean' runs out near 5000 (first_exhausted): two epochs
    assert len(ids) == 10_000
    share = sum(i.startswith("alpha/") for i in ids) / len(ids)
    assert abs(share - 0.7) <= 0.02
    for batch_start in range(0, 10_000, 100):  # every batch is a mix, not one source at a time
        batch_share = sum(i.startswith("alpha/") for i in ids[batch_start:batch_start + 100]) / 100
        assert abs(batch_share - 0.7) <= 0.02
    clean = sum(i.startswith("beta/") for i in ids)
    assert len({i for i in ids if i.startswith("beta/")}) == min(clean, 1500)  # 'clean' has 1500 rows


@pytest.mark.parametrize(("before", "after"), [(0, 2), (2, 0), (2, 1)])
def test_mix_state_resumes_exactly(mix_repos: tuple[Path, Path], before: int, after: int) -> None:
    import json

    a, b = mix_repos
    weights = {(a, "default"): 0.5, (b, "default", "train"): 0.5}
    options = {"columns": ["id"], "batch_size": 64, "seed": 3}
    full = ids_of(hubsets.mix(weights, **options))
    first_loader = hubsets.mix(weights, num_workers=before, **options)
    first = consume(first_loader, 7)
    resumed = hubsets.mix(weights, num_workers=after, **options)
    resumed.load_state_dict(json.loads(json.dumps(first_loader.state_dict())))  # as another process would
    assert first + ids_of(resumed) == full


def test_each_mix_source_names_its_config_and_split(tmp_path: Path) -> None:
    """ALLaVA-shaped configs: `two` has splits caption and instruct (no train), `one` only `extra`, `tv`
    train and test. A (source, config) key means train, or else every split of the config."""
    rows = {name: [record(name, "laion", i) for i in range(count)]
            for name, count in (("caption", 30), ("instruct", 20), ("extra", 10), ("train", 12), ("test", 8))}
    partitions = {f"data/laion/none/{name}": r for name, r in rows.items()}
    configs = {"two": {"caption": ["data/*/*/caption-*.parquet"], "instruct": ["data/*/*/instruct-*.parquet"]},
               "one": {"extra": ["data/*/*/extra-*.parquet"]},
               "tv": {"train": ["data/*/*/train-*.parquet"], "test": ["data/*/*/test-*.parquet"]}}
    repo = write_repo(tmp_path, partitions, configs)

    def datasets(loader: Any) -> Counter[str]:
        return Counter(i.split("/")[0] for i in ids_of(loader))

    assert datasets(hubsets.loader(repo, "two", columns=["id"])) == {"caption": 30, "instruct": 20}
    assert datasets(hubsets.loader(repo, "one", columns=["id"])) == {"extra": 10}
    assert datasets(hubsets.loader(repo, "tv", columns=["id"])) == {"train": 12}
    mixed = hubsets.mix({(repo, "two", "instruct"): 1, (repo, "tv", "test"): 1, (repo, "one"): 1},
                        columns=["id"], stopping="all_exhausted", batch_size=7)
    assert set(datasets(mixed)) == {"instruct", "test", "extra"}
    with pytest.raises(ValueError, match=r"config 'two' has no split 'train'; it has \['caption', 'instruct'\]"):
        hubsets.mix({(repo, "two"): 1}, split="train")
    with pytest.raises(ValueError, match="expected"):
        hubsets.mix({(repo, "two", "caption", "x"): 1})  # type: ignore[dict-item]


def test_mix_stopping_strategies(mix_repos: tuple[Path, Path]) -> None:
    a, b = mix_repos
    weights = {a: 0.5, b: 0.5}
    first = ids_of(hubsets.mix(weights, columns=["id"], batch_size=500))
    assert Counter(i.split("/")[0] for i in first)["beta"] == 3000 and len(set(first)) == len(first)
    every = ids_of(hubsets.mix(weights, columns=["id"], batch_size=500, stopping="all_exhausted"))
    counts = Counter(i.split("/")[0] for i in every)
    assert counts["alpha"] == 6000 and len({i for i in every if i.startswith("alpha")}) == 6000
    assert counts["beta"] >= 6000 - 1  # beta went round twice


def test_helpful_errors(ids_repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no config 'nope'.*clean"):
        hubsets.loader(ids_repo, "nope")
    with pytest.raises(ValueError, match="no split 'test'"):
        hubsets.loader(ids_repo, split="test")
    with pytest.raises(ValueError, match="unknown columns"):
        hubsets.loader(ids_repo, columns=["pixels"])
    with pytest.raises(FileNotFoundError):
        hubsets.loader(tmp_path / "missing")
    with pytest.raises(ValueError, match="resize"):
        hubsets.loader(ids_repo, resize="zoom")  # type: ignore[arg-type]


def test_fsspec_url_source_reads_through_the_filesystem(toy_repo: Path) -> None:
    """Any fsspec URL works; a non-local filesystem goes through `fs.open` and the prefetch thread."""
    import fsspec

    memory = fsspec.filesystem("memory")
    for path in toy_repo.rglob("*"):
        if path.is_file():
            memory.pipe_file(f"/toy/{path.relative_to(toy_repo).as_posix()}", path.read_bytes())
    try:
        remote = hubsets.loader("memory://toy", batch_size=32, image_size=16, window_bytes=20_000)
        local = hubsets.loader(toy_repo, batch_size=32, image_size=16, window_bytes=20_000)
        for ours, theirs in zip(remote, local, strict=True):
            assert ours["id"] == theirs["id"] and torch.equal(ours["pixel_values"], theirs["pixel_values"])
        assert remote.state_dict() == local.state_dict()  # same data, same fingerprint, wherever it is
    finally:
        memory.rm("/toy", recursive=True)


def test_parquet_glob_source(ids_repo: Path) -> None:
    files = str(ids_repo / "data" / "*" / "ir" / "*.parquet")
    assert sorted(ids_of(hubsets.loader(files, columns=["id"]))) == all_ids(ids_repo, "clean")


def test_reads_a_hubsets_build(skvqa_built: Path) -> None:
    import json

    manifest = json.loads((skvqa_built / "hubsets.json").read_text())
    rows = sum(entry["rows"] for entry in manifest["files"].values())
    loader = hubsets.loader(skvqa_built, batch_size=16, image_size=32, num_workers=2)
    ids = ids_of(loader)
    assert len(ids) == len(set(ids)) == rows - loader.stats["skipped_rows"]


def test_gpu_path_logic_on_the_cpu(toy_repo: Path) -> None:
    """The nvJPEG path's bookkeeping (deferral, slots, resize, orientation) run with torchvision's CPU
    decoder: it must agree with the CPU path."""
    from hubsets.loader import gpu
    from hubsets.loader.collate import RateLimitedLog, build_block, to_batch
    from hubsets.loader.decode import DecodeOptions
    from hubsets.loader.reader import Reader
    from hubsets.loader.source import resolve

    source = resolve(toy_repo)
    reader = Reader(source, ["id", "images"], seed=0, shuffle=True, window_bytes=1 << 20)
    rows = reader.rows(0, np.arange(40))
    options = DecodeOptions(image_size=24, resize="pad")
    reference = to_batch(build_block(rows, ["id", "images"], options, RateLimitedLog()))
    deferrer = gpu.Deferrer(options)
    block = build_block(rows, ["id", "images"], options, RateLimitedLog(), deferrer)
    pending = deferrer.take(list(range(len(rows))))
    assert pending
    batch, failed = gpu.finish(to_batch(block), pending, torch.device("cpu"), options, RateLimitedLog())
    assert failed == 0 and batch["pixel_values"].shape == reference["pixel_values"].shape
    diff = (batch["pixel_values"].float() - reference["pixel_values"].float()).abs().mean()
    assert diff < 3.0
    reader.close()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_decode_matches_cpu(toy_repo: Path) -> None:
    cpu = next(iter(hubsets.loader(toy_repo, batch_size=16, image_size=32)))
    cuda = next(iter(hubsets.loader(toy_repo, batch_size=16, image_size=32, device="cuda")))
    assert cuda["pixel_values"].is_cuda and cuda["id"] == cpu["id"]
    assert (cuda["pixel_values"].float().cpu() - cpu["pixel_values"].float()).abs().mean() < 3.0


def test_cuda_falls_back_to_cpu(toy_repo: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.warns(RuntimeWarning, match="no CUDA"):
        loader = hubsets.loader(toy_repo, batch_size=4, image_size=16, device="cuda")
    assert next(iter(loader))["pixel_values"].device.type == "cpu"


def test_a_run_of_bad_images_stops_with_one_error_naming_the_shard(tmp_path: Path) -> None:
    """Scattered bad images are skipped; `max_failures` unusable rows in a row (here a shard whose every
    image is garbage) end the pass with one line naming the shard and the reason, counted across batches
    in delivery order, so the same for any number of workers."""
    good, bad = photo_jpeg(24, 20, 1), b"\xff\xd8\xff" + b"garbage" * 20
    rows = [record("toy", "laion", i, [bad if 40 <= i < 70 or i % 9 == 0 else good]) for i in range(100)]
    repo = write_repo(tmp_path, {"data/laion/none/train": rows}, {"default": {"train": ["data/*/*/*.parquet"]}},
                      row_group_size=100)
    options = {"batch_size": 8, "image_size": 8, "shuffle": False}
    assert sum(len(b["id"]) for b in hubsets.loader(repo, **options)) == 100 - 30 - 9  # 0, 9, .. 99 outside
    for workers in (0, 2):
        loader = hubsets.loader(repo, num_workers=workers, max_failures=25, **options)
        with pytest.raises(hubsets.loader.source.DataError) as caught:
            ids_of(loader)
        message = str(caught.value)
        # rows 40..69 fail; the batch of rows 64..71 makes the run 30, and is not delivered
        assert "30 rows in a row were unusable (max_failures=25)" in message and "\n" not in message
        assert "data/laion/none/train-00000.parquet row group 0: image_corrupt" in message
        assert loader.stats["rows"] == 40 - 5  # rows 0..63 but 0, 9, 18, 27, 36 and 40..63
    with pytest.raises(ValueError, match="max_failures"):
        hubsets.loader(repo, max_failures=0)


def test_load_state_dict_during_an_iteration_raises(ids_repo: Path) -> None:
    loader = hubsets.loader(ids_repo, columns=["id"], batch_size=32)
    state = loader.state_dict()
    iterator = iter(loader)
    next(iterator)
    with pytest.raises(RuntimeError, match="in progress"):
        loader.load_state_dict(state)  # the pass would go on from where it is, ignoring the state
    with pytest.raises(RuntimeError, match="in progress"):
        loader.set_epoch(3)
    del iterator
    loader.load_state_dict(state)
    assert len(ids_of(loader)) == IDS_ROWS  # from the state's start, not the abandoned pass's position
    for _ in loader:
        break  # a loop left by break closes its iterator
    loader.load_state_dict(state)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_damaged_shard_is_one_error_naming_the_file(tmp_path: Path, workers: int) -> None:
    import pyarrow.parquet as pq

    rows = [record("toy", "laion", i, [photo_jpeg(24, 20, i % 3)]) for i in range(60)]
    repo = write_repo(tmp_path, {"data/laion/none/train": rows[:30], "data/wit/none/train": rows[30:]},
                      {"default": {"train": ["data/*/*/*.parquet"]}}, row_group_size=10)
    shard = repo / "data/wit/none/train-00000.parquet"
    data = shard.read_bytes()
    chunk = pq.read_metadata(shard).row_group(1).column(3)  # row group 1's images; the footer stays intact
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    size = chunk.total_compressed_size
    shard.write_bytes(data[:start] + bytes(size) + data[start + size:])
    loader = hubsets.loader(repo, batch_size=8, image_size=8, num_workers=workers)
    with pytest.raises(hubsets.loader.source.DataError) as caught:
        ids_of(loader)
    message = str(caught.value)
    assert "data/wit/none/train-00000.parquet row group 1" in message and "damaged" in message
    assert "\n" not in message and "Traceback" not in message
    shard.write_bytes(data[:len(data) // 2])  # truncated: no footer
    with pytest.raises(hubsets.loader.source.DataError, match=r"train-00000\.parquet is not a readable parquet"):
        hubsets.loader(repo)
