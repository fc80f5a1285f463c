"""`processor=`: model-ready batches from an HF processor, built in the loader's workers.

The loader decodes each image straight to the size the processor's image processor will use (CLIP's
resize-shortest-edge + centre crop is `resize="crop"`; SigLIP's fixed square is `"stretch"`; Qwen2-VL's
`smart_resize` is `resize="fit"` with its patch and pixel limits), so the processor gets uint8 tensors it
has nothing left to resize in, and its own code does the rest (rescale, normalise, patchify, image-token
expansion). Any other image processor (tiling ones such as LLaVA-NeXT's anyres or Idefics3's splitting, which
choose tiles from the stored size) gets each image decoded at its stored size, and resizes it itself.

Labels are the input ids on the assistant turns and -100 elsewhere. The character spans of the assistant
turns are found by rendering the chat template on each prefix of the conversation (which works for any
template that renders a conversation's prefix as a prefix of its text), then mapped through the processor's
image-token expansion (`text_replacement_offsets`) onto the tokens' offsets.

transformers is imported by the processor the user passes, never here: the loader itself needs none.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hubsets.loader.collate import unpack
from hubsets.loader.decode import DecodeOptions
from hubsets.loader.stream import KEPT_KEY, warn

IGNORE_INDEX = -100
"""The label of a position that must not be trained on (torch's cross-entropy default ignore_index)."""
PROBE = [{"role": role, "content": [{"type": "text", "text": text}]}
         for role, text in (("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d"))]
"""A two-turn conversation that checks, when the loader is made, that assistant turns can be located."""


@dataclass(frozen=True)
class Processing:
    """An HF processor and how to apply it to hubsets rows. `hubsets.loader(processor=P)` takes a bare
    processor (`Processing(P)`) or one of these.

    `keep`: batch columns passed through next to the model inputs (e.g. `("id",)`; the default, none, keeps
    the batch fit for `model(**batch)`). `assistant_only`: labels only on the assistant turns (False: on
    every real token). `max_length`: truncate to that many tokens. `processor_kwargs`: passed to the
    processor's `__call__` (e.g. `{"padding_side": "left"}`)."""

    processor: Any
    keep: tuple[str, ...] = ()
    assistant_only: bool = True
    max_length: int | None = None
    processor_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not callable(getattr(self.processor, "apply_chat_template", None)):
            raise TypeError(f"processor= needs an HF processor (a ProcessorMixin with apply_chat_template), "
                            f"got {type(self.processor).__name__}")
        if getattr(self.processor, "chat_template", None) is None:
            raise ValueError(f"processor= {type(self.processor).__name__} has no chat_template: set one "
                             "(processor.chat_template = ...) so that rows' messages can be rendered")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be positive, got {self.max_length}")
        object.__setattr__(self, "keep", tuple(self.keep))
        if self.assistant_only:  # a template that cannot be used fails here, in one line, not in a worker
            assistant_spans(self.processor, PROBE, self.processor.apply_chat_template(PROBE, tokenize=False),
                            "(a two-turn test conversation)")

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the loader must read for it."""
        return ("messages", "images", *self.keep)

    def decode_options(self, base: DecodeOptions) -> DecodeOptions:
        """The loader's decode for the processor's image processor: its own geometry when the loader knows it
        (the processor then resizes nothing); else each image at its stored size (it resizes them itself, as
        it would a PIL image). `base` gives the other options."""
        images = getattr(self.processor, "image_processor", None)
        native = dataclasses.replace(base, resize="fit", multiple_of=1, fit_min_pixels=1,
                                     fit_max_pixels=base.max_pixels)
        if images is None or not getattr(images, "do_resize", True) or _tiles(images):
            return native
        size = _size_dict(getattr(images, "size", None))
        if hasattr(images, "merge_size") and hasattr(images, "patch_size") and "longest_edge" in size:
            # Qwen2-VL / 2.5-VL: smart_resize with factor patch_size * merge_size, size = pixel limits
            return dataclasses.replace(base, resize="fit", multiple_of=images.patch_size * images.merge_size,
                                       fit_min_pixels=size["shortest_edge"], fit_max_pixels=size["longest_edge"])
        crop = _size_dict(getattr(images, "crop_size", None))
        if set(size) == {"shortest_edge"} and getattr(images, "do_center_crop", False):
            side = size["shortest_edge"]
            if crop.get("height") == crop.get("width") and crop.get("height", side + 1) <= side:
                # CLIP: shortest edge to `side`, centre crop; the centre `side` square holds the crop
                return dataclasses.replace(base, resize="crop", image_size=side)
        if size.keys() == {"height", "width"} and size["height"] == size["width"]:
            return dataclasses.replace(base, resize="stretch", image_size=size["height"])
        return native

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A loader batch -> the processor's outputs plus `labels` (and the `keep` columns). A row whose
        messages do not fit its images is left out with a warning, as a row with a bad image is."""
        processor = self.processor
        rows, texts, spans = [], [], []
        images = _images(batch)
        for index, (messages, row_images, row_id) in enumerate(zip(batch["messages"], images, batch["id"],
                                                                   strict=True)):
            try:
                conversation = _conversation(messages or [], len(row_images), row_id)
                text = processor.apply_chat_template(conversation, tokenize=False)
                spans.append(assistant_spans(processor, conversation, text, row_id) if self.assistant_only else [])
            except ValueError as exc:
                warn(f"hubsets.loader: skipping row {row_id!r} (processor): {exc}")
                continue
            rows.append(index)
            texts.append(text)
        images = [images[i] for i in rows]
        kept = {KEPT_KEY: (len(rows), sum(map(len, images)))} if len(rows) < len(batch["id"]) else {}
        if not rows:
            return kept  # counted as skipped, not delivered
        kwargs: dict[str, Any] = {"padding": True, **self.processor_kwargs, "return_tensors": "pt",
                                  "return_offsets_mapping": True, "return_text_replacement_offsets": True}
        if self.max_length is not None:
            kwargs.update(truncation=True, max_length=self.max_length)
        out = processor(text=texts, images=images if any(images) else None, **kwargs)
        offsets = out.pop("offset_mapping")
        replacements = out.pop("text_replacement_offsets", None) or [[] for _ in texts]
        model = dict(out.items())
        if self.assistant_only:
            mask = token_mask(offsets, [shift_spans(s, r) for s, r in zip(spans, replacements, strict=True)])
        else:
            mask = model["attention_mask"].bool()
        model["labels"] = model["input_ids"].masked_fill(~mask, IGNORE_INDEX)
        for name in self.keep:
            model[name] = [batch[name][i] for i in rows]
        return {**model, **kept}


def _tiles(images: Any) -> bool:
    """Whether an image processor cuts images into tiles chosen from their stored size (LLaVA-NeXT and
    OneVision's anyres grid, Idefics3/SmolVLM's splitting): those must see the image as stored."""
    return getattr(images, "image_grid_pinpoints", None) is not None or bool(getattr(images, "do_image_splitting",
                                                                                    False))


def _size_dict(value: Any) -> dict[str, int]:
    """An image processor's `size`/`crop_size` (a dict or a SizeDict) as a dict of its set entries."""
    if value is None:
        return {}
    items = value.items() if isinstance(value, Mapping) else vars(value).items()
    return {k: int(v) for k, v in items if v is not None}


def _images(batch: dict[str, Any]) -> list[list[torch.Tensor]]:
    """Each row's decoded images, uint8 [3, h, w] views into the batch's pixels."""
    counts = batch.get("num_images")
    if counts is None:
        return [[] for _ in batch["id"]]
    counts = counts.tolist() if isinstance(counts, torch.Tensor) else list(counts)
    flat = unpack(batch) if "image_sizes" in batch else list(batch["pixel_values"].unbind(0))
    out, start = [], 0
    for count in counts:
        out.append(flat[start:start + count])
        start += count
    return out


def _conversation(messages: Sequence[Mapping[str, Any]], images: int, row_id: str) -> list[dict[str, Any]]:
    """A row's messages as HF chat messages: empty fields dropped, one image part per image (images with no
    part go first in the first user turn, where LLaVA places them)."""
    out: list[dict[str, Any]] = []
    parts = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [{k: v for k, v in item.items() if v is not None} for item in content]
            parts += sum(1 for item in content if item.get("type") == "image")
        out.append({"role": message["role"], "content": content})
    if parts > images:
        raise ValueError(f"row {row_id!r}: its messages have {parts} image parts for {images} images")
    if parts < images:
        first = next((m for m in out if m["role"] == "user" and isinstance(m["content"], list)), None)
        if first is None:
            raise ValueError(f"row {row_id!r}: {images} images but no user turn to put them in")
        first["content"] = [{"type": "image"}] * (images - parts) + first["content"]
    return out


def assistant_spans(processor: Any, conversation: list[dict[str, Any]], text: str, row_id: str = ""
                    ) -> list[tuple[int, int]]:
    """The character spans of `text` (the rendered `conversation`) that the assistant turns produce: from the
    end of the prefix rendered with the generation prompt to the end of the prefix including the turn
    (its end-of-turn marker included, so the model learns to stop; the whitespace after it not)."""
    spans = []
    for index, message in enumerate(conversation):
        if message["role"] != "assistant":
            continue
        start = processor.apply_chat_template(conversation[:index], tokenize=False, add_generation_prompt=True)
        through = processor.apply_chat_template(conversation[:index + 1], tokenize=False)
        if not (text.startswith(start) and text.startswith(through)) or len(through) < len(start):
            raise ValueError(f"row {row_id!r}: the chat template does not render the conversation's prefixes "
                             "as prefixes of its text, so assistant turns cannot be located; pass "
                             "Processing(processor, assistant_only=False) to train on every token")
        spans.append((len(start), max(len(start), len(through.rstrip()))))
    return spans


def shift_spans(spans: list[tuple[int, int]], replacements: Sequence[Mapping[str, Any]]
                ) -> list[tuple[int, int]]:
    """Character spans of the rendered text moved to the text after the processor expanded its image tokens
    (`replacements`: the processor's `text_replacement_offsets` of the row, in order)."""
    out = []
    for start, end in spans:
        moved = []
        for char in (start, end):
            gained = 0
            for item in replacements:
                if item["span"][1] <= char:
                    gained = item["new_span"][1] - item["span"][1]
            moved.append(char + gained)
        out.append((moved[0], moved[1]))
    return out


def token_mask(offsets: torch.Tensor, spans: Sequence[list[tuple[int, int]]]) -> torch.Tensor:
    """[B, T] bool: the tokens overlapping a span of their row (padding and added specials are zero-width
    and never overlap)."""
    begin, end = offsets[..., 0], offsets[..., 1]
    mask = torch.zeros(begin.shape, dtype=torch.bool)
    for row, row_spans in enumerate(spans):
        for start, stop in row_spans:
            mask[row] |= (begin[row] < stop) & (end[row] > start)
    return mask


@dataclass(frozen=True)
class Chained:
    """`first`, then `then`: the processor, then the user's `transform` (picklable, unlike a closure)."""

    first: Any
    then: Any

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        first = self.first(batch)
        kept = {KEPT_KEY: first.pop(KEPT_KEY)} if KEPT_KEY in first else {}
        if kept and not kept[KEPT_KEY][0]:
            return kept
        result: dict[str, Any] = self.then(first)
        return {**result, **kept}


def as_processing(processor: Any) -> Processing | None:
    """`processor=` as given to the loader: None, a `Processing`, or a bare HF processor."""
    if processor is None or isinstance(processor, Processing):
        return processor
    return Processing(processor)


def columns_for(processing: Processing, columns: Sequence[str] | None) -> tuple[str, ...]:
    """The columns to read: the processor's (messages, images and `keep`), plus any the user asked for."""
    return tuple(dict.fromkeys([*(columns or ()), *processing.columns]))
