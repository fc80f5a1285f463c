"""Chat `messages` for caption datasets (KALE, Synth²): a caption is the answer to a captioning instruction.

Upstream publishes (image, caption) pairs, not conversations, and an empty `messages` list breaks every chat
template and TRL's conversational checks. So a row with an image becomes one exchange: a user turn holding
the image part and the instruction (`--set caption_prompt=...`, default `DEFAULT_PROMPT`), and an assistant
turn holding the caption exactly as published. A row without any image gets the caption as a lone
assistant turn (`caption_only`): no instruction that claims an image the row does not hold. Synth²'s rows
hold their image as an embedding: they get the exchange, and its image part stands for `image_embedding`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULT_PROMPT = "Describe this image in detail."
MAX_PROMPT_CHARS = 2000
SETTING = f"instruction of the user turn of a captioning exchange (default {DEFAULT_PROMPT!r})"
"""The `caption_prompt` help text, the same for every caption builder."""


def prompt(values: Mapping[str, str]) -> str:
    """`--set caption_prompt`, exactly as given (default `DEFAULT_PROMPT`); `ValueError` if empty or huge."""
    text = values.get("caption_prompt", DEFAULT_PROMPT)
    if not text.strip():
        raise ValueError("--set caption_prompt= is empty: give the instruction the caption answers "
                         f"(default {DEFAULT_PROMPT!r})")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"--set caption_prompt is {len(text):,} characters; at most {MAX_PROMPT_CHARS:,}")
    return text


def exchange(instruction: str, caption: str) -> list[dict[str, Any]]:
    """User turn [image part, instruction], assistant turn [caption]: one image goes where the image part is."""
    return [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": instruction}]},
            {"role": "assistant", "content": [{"type": "text", "text": caption}]}]


def caption_only(caption: str) -> list[dict[str, Any]]:
    """The caption as a lone assistant turn, for rows that hold no image (see the module docstring)."""
    return [{"role": "assistant", "content": [{"type": "text", "text": caption}]}]
