"""processor=: the loader's model-ready batches against the same HF processor called on PIL images of the same
rows (token ids, masks, grids exactly; pixels by PSNR), labels against HF's own assistant mask, and the batches
through `model(**batch)` of tiny randomly initialised LLaVA and Qwen2-VL models."""

from __future__ import annotations

import dataclasses
import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from loader_fixtures import photo_jpeg, record, write_repo
from PIL import Image
from processor_fixtures import llava_next_processor, llava_processor, qwen2vl_processor, tiny_llava, tiny_qwen2vl

import hubsets
from hubsets.loader import Processing
from hubsets.loader.decode import DecodeOptions

SIZES = [(97, 61), (64, 64), (150, 90), (41, 123), (200, 170), (77, 58)]
"""(width, height) of the test images: landscape, square, portrait, odd sizes."""


def _rows() -> tuple[list[dict[str, Any]], dict[str, list[bytes]]]:
    """12 rows: one or two images (a row with two has two image parts), some with two turns."""
    rows, images = [], {}
    for i in range(12):
        count = 2 if i % 5 == 3 else 1
        data = [photo_jpeg(*SIZES[(i + k) % len(SIZES)], seed=i * 3 + k) for k in range(count)]
        row = record("toy", "coco", i, data)
        row["messages"][0]["content"] = [{"type": "image", "text": None}] * count + row["messages"][0]["content"][1:]
        if i % 3 == 1:
            row["messages"] += [{"role": "user", "content": [{"type": "text", "text": f"context {i}?"}]},
                                {"role": "assistant", "content": [{"type": "text", "text": f"describe {i}"}]}]
        rows.append(row)
        images[row["id"]] = data
    return rows, images


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[bytes]]]:
    rows, images = _rows()
    root = write_repo(tmp_path_factory.mktemp("proc"), {"data/coco/none/train": rows},
                      {"default": {"train": ["data/*/*/*.parquet"]}}, row_group_size=4)
    return root, images


def _reference(processor: Any, batch_ids: list[str], messages: list[Any], images: dict[str, list[bytes]]) -> Any:
    """The processor's own path: PIL images at their stored size inside the conversations, HF's assistant
    mask from the template's {% generation %} markers."""
    conversations = []
    for row_id, turns in zip(batch_ids, messages, strict=True):
        pil = iter([Image.open(io.BytesIO(b)).convert("RGB") for b in images[row_id]])
        conversations.append([{"role": m["role"], "content": [
            {"type": "image", "image": next(pil)} if part["type"] == "image" else {"type": "text", "text": part["text"]}
            for part in m["content"]]} for m in turns])
    return processor.apply_chat_template(conversations, tokenize=True, return_dict=True, return_tensors="pt",
                                         return_assistant_tokens_mask=True, processor_kwargs={"padding": True})


def _psnr(ours: torch.Tensor, theirs: torch.Tensor, processor: Any) -> float:
    """PSNR in 8-bit units of two normalised pixel tensors (channel axis 1, as the processors lay it out; -3 for
    LLaVA-NeXT's [B, tiles, 3, h, w])."""
    if ours.dim() == 5:
        ours, theirs = ours.flatten(0, 1), theirs.flatten(0, 1)
    std = torch.tensor(processor.image_processor.image_std).view(1, 3, -1)
    a, b = ours.reshape(ours.shape[0], 3, -1), theirs.reshape(theirs.shape[0], 3, -1)
    mse = (((a - b) * std * 255) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255 ** 2 / mse)


@pytest.mark.parametrize(("make", "floor"), [(llava_processor, 30), (qwen2vl_processor, 40),
                                             (llava_next_processor, 45)], ids=["llava", "qwen2vl", "llava-next"])
def test_batches_match_the_processor_on_pil_images(repo: tuple[Path, dict[str, list[bytes]]], make: Any,
                                                   floor: float) -> None:
    root, images = repo
    processor = make()
    ours = list(hubsets.loader(root, processor=Processing(processor, keep=("id", "messages")), batch_size=4,
                               shuffle=False))
    assert sum(len(b["id"]) for b in ours) == 12
    psnrs = []
    for batch in ours:
        ref = _reference(processor, batch["id"], batch["messages"], images)
        # every model input equal (input_ids, attention_mask, image_grid_thw, mm_token_type_ids, image_sizes)
        assert set(batch) == {*ref.keys(), "labels", "id", "messages"} - {"assistant_masks"}
        for name in set(ref.keys()) - {"pixel_values", "assistant_masks"}:
            assert torch.equal(batch[name], ref[name]), name
        expected = ref["input_ids"].masked_fill(~ref["assistant_masks"].bool(), -100)
        assert torch.equal(batch["labels"], expected)
        assert (batch["labels"] != -100).any(dim=1).all()
        assert batch["pixel_values"].shape == ref["pixel_values"].shape
        psnrs.append(_psnr(batch["pixel_values"], ref["pixel_values"], processor))
    # reduced-size JPEG decode + antialiased bilinear vs full decode + the processor's bicubic, on noise-like
    # photos resized to 28-112 pixels (measured: LLaVA/CLIP crop 32.8 dB, Qwen2-VL fit 43.3 dB at the minimum)
    assert min(psnrs) > floor, psnrs
    print(f"{make.__name__}: PSNR vs the processor on PIL images: min {min(psnrs):.1f} dB")


def test_workers_build_the_same_batches(repo: tuple[Path, dict[str, list[bytes]]]) -> None:
    root, _ = repo
    processor = qwen2vl_processor()
    runs = [list(hubsets.loader(root, processor=processor, batch_size=5, num_workers=w, seed=3)) for w in (0, 2)]
    assert [sorted(b) for b in runs[0]] == [sorted(b) for b in runs[1]]
    for a, b in zip(*runs, strict=True):
        for name in a:
            assert torch.equal(a[name], b[name]), name
    assert set(runs[0][0]) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                               "image_grid_thw", "labels"}


@pytest.mark.parametrize(("make", "model"), [(llava_processor, tiny_llava), (qwen2vl_processor, tiny_qwen2vl)],
                         ids=["llava", "qwen2vl"])
def test_batches_go_straight_into_the_model(repo: tuple[Path, dict[str, list[bytes]]], make: Any,
                                            model: Any) -> None:
    root, _ = repo
    processor = make()
    net = model(processor)
    batch = next(iter(hubsets.loader(root, processor=processor, batch_size=4)))
    out = net(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    # the loss covers exactly the assistant tokens: recompute it from the logits
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    manual = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    assert torch.allclose(out.loss, manual, atol=1e-5)


def test_all_tokens_and_truncation(repo: tuple[Path, dict[str, list[bytes]]]) -> None:
    root, _ = repo
    processor = llava_processor()
    full = next(iter(hubsets.loader(root, processor=Processing(processor, assistant_only=False), batch_size=3,
                                    shuffle=False)))
    assert torch.equal(full["labels"] != -100, full["attention_mask"].bool())
    cut = next(iter(hubsets.loader(root, processor=Processing(processor, max_length=12), batch_size=3,
                                   shuffle=False)))
    assert cut["input_ids"].shape[1] <= 12 < full["input_ids"].shape[1]


def test_geometry_follows_the_image_processor() -> None:
    from transformers import (
        CLIPImageProcessor,
        Idefics3ImageProcessor,
        LlavaOnevisionImageProcessor,
        SiglipImageProcessor,
    )

    base = DecodeOptions()
    qwen = Processing(qwen2vl_processor(min_pixels=1000, max_pixels=9000)).decode_options(base)
    assert (qwen.resize, qwen.multiple_of, qwen.fit_min_pixels, qwen.fit_max_pixels) == ("fit", 28, 1000, 9000)
    llava = Processing(llava_processor(56)).decode_options(base)
    assert (llava.resize, llava.image_size) == ("crop", 56)
    processor = llava_processor()
    processor.image_processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56})
    assert Processing(processor).decode_options(base).image_size == 64  # the processor crops 56 from the 64 square
    processor.image_processor = SiglipImageProcessor(size={"height": 48, "width": 48})
    siglip = Processing(processor).decode_options(base)
    assert (siglip.resize, siglip.image_size) == ("stretch", 48)
    # anything else, tiling ones above all, gets images at their stored size and resizes them itself
    native = dataclasses.replace(base, resize="fit", multiple_of=1, fit_min_pixels=1, fit_max_pixels=base.max_pixels)
    processor.image_processor = SiglipImageProcessor(size={"height": 48, "width": 64})
    assert Processing(processor).decode_options(base) == native
    processor.image_processor = CLIPImageProcessor(do_resize=False)
    assert Processing(processor).decode_options(base) == native
    assert Processing(llava_next_processor()).decode_options(base) == native
    for tiling in (Idefics3ImageProcessor(), LlavaOnevisionImageProcessor()):
        processor.image_processor = tiling
        assert Processing(processor).decode_options(base) == native, type(tiling).__name__


def test_bad_processors_are_one_line_errors() -> None:
    with pytest.raises(TypeError, match="needs an HF processor"):
        Processing(object())
    processor = llava_processor()
    processor.chat_template = None
    with pytest.raises(ValueError, match="no chat_template"):
        Processing(processor)


def test_rows_without_images_and_rows_that_do_not_fit(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch mixing rows with and without images goes through; an image without a part in the messages goes
    first in the first user turn; a row with more image parts than images is left out with a warning naming
    it, the rest of its batch kept."""
    from hubsets.loader.stream import warn

    monkeypatch.setattr(warn, "sent", 0)  # the process-wide limiter: earlier tests' warnings used its burst
    rows = [record("toy", "coco", i, [photo_jpeg(50, 40, i)] if i % 2 else []) for i in range(6)]
    for row in rows:
        if not row["images"]:
            row["messages"][0]["content"] = row["messages"][0]["content"][1:]
    rows[4]["messages"][0]["content"] = [{"type": "image", "text": None}] * 2 + rows[4]["messages"][0]["content"]
    rows[5]["messages"][0]["content"] = rows[5]["messages"][0]["content"][1:]  # an image without its part
    root = write_repo(tmp_path, {"data/coco/none/train": rows}, {"default": {"train": ["data/*/*/*.parquet"]}})
    processor = llava_processor()
    batches = list(hubsets.loader(root, processor=Processing(processor, keep=("id",)), batch_size=6,
                                  shuffle=False))
    assert batches[0]["id"] == ["toy/coco/0", "toy/coco/1", "toy/coco/2", "toy/coco/3", "toy/coco/5"]
    assert batches[0]["input_ids"].shape[0] == 5 and batches[0]["pixel_values"].shape[0] == 3
    image_token = processor.image_token_id
    assert [int((r == image_token).sum()) for r in batches[0]["input_ids"]] == [0, 4, 0, 4, 4]
    assert "skipping row 'toy/coco/4' (processor): row 'toy/coco/4': its messages have 2 image parts" in caplog.text
    # batches of one row: the bad row's batch is not delivered, the stats count it; a transform runs after
    loader = hubsets.loader(root, processor=Processing(processor, keep=("id",)), batch_size=1, shuffle=False,
                            transform=_tag)
    batches = list(loader)
    assert [b["id"] for b in batches] == [["toy/coco/0"], ["toy/coco/1"], ["toy/coco/2"], ["toy/coco/3"],
                                          ["toy/coco/5"]]
    assert all(b["tagged"] for b in batches)
    assert loader.stats["rows"] == 5 and loader.stats["images"] == 3 and loader.stats["skipped"] == {"processor": 1}


def _tag(batch: dict[str, Any]) -> dict[str, Any]:
    """A user transform after the processor (module level: workers pickle it)."""
    return {**batch, "tagged": True}


def test_a_template_that_hides_assistant_turns_fails_at_once() -> None:
    processor = llava_processor()
    # renders only the last message: a prefix of the conversation is not a prefix of its text
    processor.chat_template = "{{ messages[-1]['content'][0]['text'] }}"
    with pytest.raises(ValueError, match="cannot be located; pass Processing"):
        hubsets.loader.Processing(processor)
    assert Processing(processor, assistant_only=False).assistant_only is False
