"""The event contract: parse and validate `items` and `behaviour` messages, and build DLQ records."""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

BEHAVIOUR_TYPES = frozenset({"view", "click", "cart", "purchase", "review", "search", "dislike"})
MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 20_000


class EventError(ValueError):
    """A message that breaks the event contract; its text is the reason stored in the dead-letter topic."""


@dataclass(frozen=True, slots=True)
class ItemEvent:
    """A catalogue entry (or its deletion) from the `items` topic."""

    item_id: str
    title: str
    text: str
    category: str
    tags: tuple[str, ...]
    deleted: bool

    def document(self) -> str:
        """The text the encoder embeds for this item: title, then description."""
        return f"{self.title}. {self.text}" if self.text else self.title

    def payload(self) -> dict[str, Any]:
        """What the vector store keeps beside the vector (returned with every hit)."""
        return {"item_id": self.item_id, "title": self.title, "category": self.category, "tags": list(self.tags)}


@dataclass(frozen=True, slots=True)
class BehaviourEvent:
    """One user action from the `behaviour` topic."""

    event_id: str
    user_id: str
    type: str
    item_id: str | None
    text: str | None
    ts: float


def _decode(raw: bytes | str | dict) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EventError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise EventError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _str_field(value: dict[str, Any], name: str, *, required: bool, limit: int = MAX_ID_LENGTH) -> str | None:
    v = value.get(name)
    if v is None or v == "":
        if required:
            raise EventError(f"missing required field {name!r}")
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise EventError(f"field {name!r} must be a string, got {type(v).__name__}")
    v = str(v)
    if len(v) > limit:
        raise EventError(f"field {name!r} is longer than {limit} characters")
    return v


def parse_timestamp(v: Any) -> float:
    """Epoch seconds (int/float/numeric string) or ISO-8601 (naive means UTC) to epoch seconds."""
    if isinstance(v, bool):
        raise EventError("field 'ts' must be epoch seconds or ISO-8601, got a boolean")
    if isinstance(v, (int, float)):
        ts = float(v)
    elif isinstance(v, str):
        try:
            ts = float(v)
        except ValueError:
            try:
                dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
            except ValueError:
                raise EventError(f"field 'ts' is neither epoch seconds nor ISO-8601: {v!r}") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            ts = dt.timestamp()
    else:
        raise EventError(f"field 'ts' must be epoch seconds or ISO-8601, got {type(v).__name__}")
    if not math.isfinite(ts) or ts < 0:
        raise EventError(f"field 'ts' is not a valid time: {v!r}")
    if ts > 1e11:  # epoch milliseconds slipped in: say so rather than guess
        raise EventError(f"field 'ts' looks like milliseconds ({v!r}); send epoch seconds")
    return ts


def parse_behaviour(raw: bytes | str | dict) -> BehaviourEvent:
    """Validate one behaviour message; raises EventError with the reason when it breaks the contract."""
    value = _decode(raw)
    etype = _str_field(value, "type", required=True)
    if etype not in BEHAVIOUR_TYPES:
        raise EventError(f"unknown event type {etype!r}; expected one of {sorted(BEHAVIOUR_TYPES)}")
    item_id = _str_field(value, "item_id", required=False)
    text = _str_field(value, "text", required=False, limit=MAX_TEXT_LENGTH)
    if etype == "search" and not text:
        raise EventError("a search event needs a non-empty 'text'")
    if etype != "search" and item_id is None and not text:
        raise EventError(f"a {etype} event needs an 'item_id' (or a 'text')")
    if "ts" not in value:
        raise EventError("missing required field 'ts'")
    return BehaviourEvent(
        event_id=_str_field(value, "event_id", required=True),  # type: ignore[arg-type]
        user_id=_str_field(value, "user_id", required=True),  # type: ignore[arg-type]
        type=etype,
        item_id=item_id,
        text=text,
        ts=parse_timestamp(value["ts"]),
    )


def parse_item(raw: bytes | str | dict) -> ItemEvent:
    """Validate one catalogue message; raises EventError with the reason when it breaks the contract."""
    value = _decode(raw)
    item_id = _str_field(value, "item_id", required=True)
    deleted = value.get("deleted", False)
    if not isinstance(deleted, bool):
        raise EventError("field 'deleted' must be true or false")
    title = _str_field(value, "title", required=not deleted, limit=MAX_TEXT_LENGTH) or ""
    tags = value.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise EventError("field 'tags' must be a list of strings")
    return ItemEvent(
        item_id=item_id,  # type: ignore[arg-type]
        title=title,
        text=_str_field(value, "text", required=False, limit=MAX_TEXT_LENGTH) or "",
        category=_str_field(value, "category", required=False) or "",
        tags=tuple(tags),
        deleted=deleted,
    )


def dead_letter(raw: bytes | None, key: bytes | None, reason: str, topic: str, partition: int, offset: int) -> dict[str, Any]:
    """The DLQ record: the original bytes (base64, plus text when it decodes), the reason and the source position."""
    text: str | None
    try:
        text = raw.decode("utf-8") if raw is not None else None
    except UnicodeDecodeError:
        text = None
    return {
        "reason": reason,
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key.decode("utf-8", "replace") if key is not None else None,
        "value_b64": base64.b64encode(raw).decode("ascii") if raw is not None else None,
        "value_text": text,
    }
