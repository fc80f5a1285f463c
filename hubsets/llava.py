"""The LLaVA conversation format <-> HF chat `messages`, losslessly (builders read with it, export writes with it).

LLaVA rows hold `conversations: [{from, value}]`, with an `<image>` token inside a
`value` where the image goes. hubsets rows hold HF chat `messages: [{role, content: [parts]}]`.
`conversations_to_messages` splits each `value` at every `<image>` token: the substrings around the
tokens become text parts *exactly* (newlines next to the token included; empty substrings are
omitted) and each token becomes a `{"type": "image", "text": None}` part at that place. So
`"<image>\\nDescribe."` becomes `[image, text "\\nDescribe."]` and `"Describe.\\n<image>"` becomes
`[text "Describe.\\n", image]`; joining the parts back (text as is, image as `<image>`) gives the upstream
value byte for byte, for any number of turns and tokens. Two cases need `meta` (read back by
`messages_to_conversations`):

- `meta.roles`: the upstream `from` values, only when one differs from the canonical inverse
  (`user` -> `human`, `assistant` -> `gpt`, `system` -> `system`).
- `meta.image_slots`: rows published without their image (StableLLaVA before rendering) drop the
  placeholder from the text (an image part with no image breaks chat templates); each slot records
  the turn, the character offset in the upstream value, and the exact text removed (`"<image>\\n"`,
  `"\\n<image>"` or `"<image>"`), so the export puts it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hubsets import errors, sources

IMAGE_TOKEN = "<image>"
ROLE_OF = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
"""Upstream `from` value (case-insensitive) -> chat role."""
FROM_OF = {"user": "human", "assistant": "gpt", "system": "system"}
"""Chat role -> the LLaVA `from` value written when `meta.roles` does not say otherwise."""


class ConversationError(errors.RowError, ValueError):
    """Upstream conversations that cannot be converted: the row is rejected with the reason (`hubsets.errors`)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason, detail, f"{reason}: {detail}")


@dataclass
class Converted:
    messages: list[dict[str, Any]]
    image_parts: int
    """How many `{"type": "image"}` parts the messages hold."""
    tokens: int
    """How many `<image>` tokens the upstream text held (in any mode)."""
    roles: list[str] | None = None
    image_slots: list[dict[str, Any]] | None = None
    turn_extra: dict[str, dict[str, Any]] | None = None


def split_image_tokens(value: str) -> list[dict[str, Any]]:
    """A turn's text as content parts: the exact substrings around each `<image>`, and an image part per token."""
    parts: list[dict[str, Any]] = []
    for index, piece in enumerate(value.split(IMAGE_TOKEN)):
        if index:
            parts.append({"type": "image", "text": None})
        if piece:
            parts.append({"type": "text", "text": piece})
    return parts or [{"type": "text", "text": ""}]


def join_image_tokens(content: Sequence[Mapping[str, Any]]) -> str:
    """Inverse of `split_image_tokens`: text parts as they are, image parts as `<image>`."""
    return "".join(IMAGE_TOKEN if part["type"] == "image" else (part["text"] or "") for part in content)


def strip_image_tokens(value: str, turn: int) -> tuple[str, list[dict[str, Any]]]:
    """`value` without its `<image>` tokens (each with one adjacent newline, LLaVA style), and the slots
    that put them back: `{"turn", "offset" (in the upstream value), "text" (removed exactly)}`."""
    slots: list[dict[str, Any]] = []
    out: list[str] = []
    pos = 0
    while True:
        at = value.find(IMAGE_TOKEN, pos)
        if at < 0:
            out.append(value[pos:])
            break
        start, end = at, at + len(IMAGE_TOKEN)
        if value.startswith("\n", end):
            end += 1
        elif at > pos and value[at - 1] == "\n":
            start -= 1
        out.append(value[pos:start])
        slots.append({"turn": turn, "offset": start, "text": value[start:end]})
        pos = end
    return "".join(out), slots


def restore_image_tokens(text: str, slots: Sequence[Mapping[str, Any]]) -> str:
    """Inverse of `strip_image_tokens` (slots of one turn, in upstream order)."""
    for slot in sorted(slots, key=lambda s: int(s["offset"])):
        offset = int(slot["offset"])
        text = text[:offset] + str(slot["text"]) + text[offset:]
    return text


def conversations_to_messages(conversations: Any, *, images: bool, strip_placeholders: bool = False) -> Converted:
    """Upstream LLaVA `conversations` -> chat `messages`, losslessly (see the module docstring).

    `images`: the row has image(s), so `<image>` tokens become image parts. Without images the tokens
    stay literal text (ALLaVA's Evol-Instruct text can mention `<image>` as an HTML tag), unless
    `strip_placeholders` (a placeholder for an image that was not published): then they are removed
    and recorded in `image_slots`. Raises `ConversationError` (`missing_conversations`, `wrong_type`,
    `empty_conversations`, `missing_field`, `unknown_role`).
    """
    if conversations is None:
        raise ConversationError("missing_conversations", "conversations is null")
    if not isinstance(conversations, list):
        raise ConversationError("wrong_type", f"conversations must be a list, got {type(conversations).__name__}")
    if not conversations:
        raise ConversationError("empty_conversations", "conversations is an empty list")
    messages: list[dict[str, Any]] = []
    froms: list[str] = []
    slots: list[dict[str, Any]] = []
    extra: dict[str, dict[str, Any]] = {}
    image_parts = tokens = 0
    canonical = True
    for index, turn in enumerate(conversations):
        where = f"conversations[{index}]"
        if not isinstance(turn, dict):
            raise ConversationError("wrong_type", f"{where} must be an object, got {type(turn).__name__}")
        for key in ("from", "value"):
            if key not in turn:
                raise ConversationError("missing_field", f"{where} has no {key!r}")
        source, value = turn["from"], turn["value"]
        if not isinstance(source, str):
            raise ConversationError("wrong_type", f"{where}.from must be a string, got {type(source).__name__}")
        if not isinstance(value, str):
            raise ConversationError("wrong_type", f"{where}.value must be a string, got {type(value).__name__}")
        role = ROLE_OF.get(source.lower())
        if role is None:
            raise ConversationError("unknown_role", f"{where}.from is {source[:40]!r}; known: "
                                    + ", ".join(sorted(ROLE_OF)))
        canonical = canonical and source == FROM_OF[role]
        froms.append(source)
        tokens += value.count(IMAGE_TOKEN)
        if images:
            content = split_image_tokens(value)
            image_parts += sum(1 for part in content if part["type"] == "image")
        elif strip_placeholders and IMAGE_TOKEN in value:
            text, turn_slots = strip_image_tokens(value, index)
            slots += turn_slots
            content = [{"type": "text", "text": text}]
        else:
            content = [{"type": "text", "text": value}]
        messages.append({"role": role, "content": content})
        others = {k: sources.to_jsonable(v) for k, v in turn.items() if k not in ("from", "value")}
        if others:
            extra[str(index)] = others
    return Converted(messages, image_parts, tokens, None if canonical else froms, slots or None, extra or None)


def messages_to_conversations(messages: Sequence[Mapping[str, Any]], meta: Mapping[str, Any] | None = None
                              ) -> list[dict[str, Any]]:
    """Chat `messages` (+ the row's `meta`) -> LLaVA `conversations`, exactly as upstream had them."""
    meta = meta or {}
    roles = meta.get("roles")
    slots = meta.get("image_slots") or []
    extra = meta.get("turn_extra") or {}
    conversations = []
    for index, message in enumerate(messages):
        value = join_image_tokens(message["content"])
        turn_slots = [s for s in slots if int(s["turn"]) == index]
        if turn_slots:
            value = restore_image_tokens(value, turn_slots)
        source = roles[index] if roles and index < len(roles) else FROM_OF.get(message["role"], message["role"])
        turn: dict[str, Any] = {"from": source, "value": value}
        turn.update(extra.get(str(index), {}))
        conversations.append(turn)
    return conversations
