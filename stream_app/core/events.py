"""The event contract: parse and validate `items` and `behaviour` messages, build DLQ records, and keep the
`recommendations` records within a message's size."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

T = TypeVar("T")

BEHAVIOUR_TYPES = frozenset({"view", "click", "cart", "purchase", "review", "search", "dislike", "forget"})
FORGET = "forget"  # deletes the user's state and every per-user trace the worker keeps (see README, Privacy)

# Input bounds, in one place (README "Reliability" states them). A message over a bound is dead-lettered.
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB: a value longer than this is rejected before it is decoded
MAX_TEXT_BYTES = 16 << 10  # 16 KiB of UTF-8 per text field (title, text)
MAX_ID_LENGTH = 256  # characters of an id, type or category
MAX_TAGS = 64
MAX_FUTURE_SKEW_S = 86_400.0  # ts may be at most a day ahead of the message's broker timestamp (past ts: any, back to epoch 0)
# Dead-letter records: what is copied of the original message, so that a record always fits the broker.
DLQ_VALUE_BYTES = 32 << 10
DLQ_KEY_CHARS = 1024
DLQ_REASON_CHARS = 1000
LIST_TITLE_CHARS = 200  # an item's title in a recommendation record (the catalogue holds the whole one)


@dataclass(frozen=True, slots=True)
class MessageMeta:
    """Where a message came from, for the checks that need more than its value: key and broker timestamp."""

    key: bytes | None
    timestamp: float | None  # broker (or producer) timestamp, epoch seconds


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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")  # json.loads' own error type: _decode adds "not valid JSON: "


def _decode(raw: bytes | str | dict | None) -> dict[str, Any]:
    """The message as a JSON object; EventError for an empty, over-size, non-UTF-8, non-JSON or too-deep value.

    json's C decoder guards its own recursion, so a 100k-deep array raises RecursionError (caught here) rather
    than crashing; a 5,000-digit number raises ValueError (the int digits limit). Both become EventError.
    """
    if isinstance(raw, dict):
        return raw
    if raw is None or len(raw) == 0:
        raise EventError("empty value (a tombstone or an empty message)")
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_MESSAGE_BYTES:
        raise EventError(f"message of {len(raw)} bytes is over the {MAX_MESSAGE_BYTES}-byte limit")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventError(f"not valid UTF-8: {exc}") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise EventError("not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, or the int digits limit
        raise EventError(f"not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise EventError(f"expected a JSON object, got {type(value).__name__}")
    return value


def _checked_text(v: str, name: str, limit_bytes: int) -> str:
    """v itself when it is valid Unicode (no lone surrogates) of at most limit_bytes UTF-8 bytes."""
    try:
        size = len(v.encode("utf-8"))
    except UnicodeEncodeError:
        raise EventError(f"field {name!r} is not valid Unicode (a lone surrogate)") from None
    if size > limit_bytes:
        raise EventError(f"field {name!r} is longer than {limit_bytes} bytes")
    return v


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
    return _checked_text(v, name, 4 * limit)


def _text_field(value: dict[str, Any], name: str, *, required: bool) -> str | None:
    """A free-text field: at most MAX_TEXT_BYTES of UTF-8."""
    v = _str_field(value, name, required=required, limit=MAX_MESSAGE_BYTES)
    return None if v is None else _checked_text(v, name, MAX_TEXT_BYTES)


def _show(v: Any) -> str:
    """A value for a reason: repr, cut to 40 characters."""
    r = repr(v) if not isinstance(v, int) or v.bit_length() < 128 else "a huge integer"
    return r if len(r) <= 40 else r[:37] + "..."


def parse_timestamp(v: Any) -> float:
    """Epoch seconds (int/float/numeric string) or ISO-8601 (naive means UTC) to epoch seconds."""
    if isinstance(v, bool):
        raise EventError("field 'ts' must be epoch seconds or ISO-8601, got a boolean")
    if isinstance(v, str) and len(v) > 64:
        raise EventError("field 'ts' is longer than 64 characters")
    try:
        if isinstance(v, (int, float)):
            ts = float(v)
        elif isinstance(v, str):
            try:
                ts = float(v)
            except ValueError:
                try:
                    dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
                except ValueError:
                    raise EventError(f"field 'ts' is neither epoch seconds nor ISO-8601: {_show(v)}") from None
                if dt.tzinfo is None:
                    dt = dt.replace(tzinfo=timezone.utc)
                ts = dt.timestamp()
        else:
            raise EventError(f"field 'ts' must be epoch seconds or ISO-8601, got {type(v).__name__}")
    except OverflowError:
        raise EventError("field 'ts' is out of range") from None
    if not math.isfinite(ts) or ts < 0:
        raise EventError(f"field 'ts' is not a valid time: {_show(v)}")
    if ts > 1e11:  # epoch milliseconds slipped in: say so rather than guess
        raise EventError(f"field 'ts' looks like milliseconds ({_show(v)}); send epoch seconds")
    return ts


def _check_meta(meta: MessageMeta | None, id_field: str, id_value: str, ts: float | None = None) -> None:
    """The key must be the id (it decides the partition, hence where the state lives); ts at most a day ahead."""
    if meta is None:
        return
    try:
        key = meta.key.decode("utf-8") if meta.key is not None else None
    except UnicodeDecodeError:
        key = None
    if key != id_value:
        raise EventError(f"message key is not the {id_field} (the key decides the partition): "
                         f"send it keyed by its {id_field}")
    if ts is not None and meta.timestamp is not None and ts > meta.timestamp + MAX_FUTURE_SKEW_S:
        raise EventError(f"field 'ts' is {ts - meta.timestamp:.0f} s ahead of the message's broker timestamp "
                         f"(at most {MAX_FUTURE_SKEW_S:.0f} s allowed)")


def _judged_alone(parse: Callable[[Any, MessageMeta | None], T], raw: Any, meta: MessageMeta | None) -> T:
    """parse(raw, meta), with any exception but EventError turned into one: a message that makes the parser fail in
    any way (recursion, a huge number, a type nobody expected) is that message's fault and costs only itself."""
    try:
        return parse(raw, meta)
    except EventError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever a message provokes, it is that message's fault
        raise EventError(f"unreadable message: {type(exc).__name__}: {exc}"[:DLQ_REASON_CHARS]) from None


def parse_behaviour(raw: bytes | str | dict | None, meta: MessageMeta | None = None) -> BehaviourEvent:
    """Validate one behaviour message; raises EventError with the reason when it breaks the contract.

    With `meta` (the agents pass it) the key must equal user_id and ts may be at most MAX_FUTURE_SKEW_S ahead of
    the broker timestamp. Any other exception while judging the message also becomes an EventError: one bad
    message never fails anything but itself.
    """
    return _judged_alone(_parse_behaviour, raw, meta)


def _parse_behaviour(raw: bytes | str | dict | None, meta: MessageMeta | None) -> BehaviourEvent:
    value = _decode(raw)
    etype = _str_field(value, "type", required=True)
    if etype not in BEHAVIOUR_TYPES:
        raise EventError(f"unknown event type {etype!r}; expected one of {sorted(BEHAVIOUR_TYPES)}")
    item_id = _str_field(value, "item_id", required=False)
    text = _text_field(value, "text", required=False)
    if etype == "search" and not text:
        raise EventError("a search event needs a non-empty 'text'")
    if etype not in ("search", FORGET) and item_id is None and not text:
        raise EventError(f"a {etype} event needs an 'item_id' (or a 'text')")
    if "ts" not in value:
        raise EventError("missing required field 'ts'")
    event = BehaviourEvent(
        event_id=_str_field(value, "event_id", required=True),  # type: ignore[arg-type]
        user_id=_str_field(value, "user_id", required=True),  # type: ignore[arg-type]
        type=etype,
        item_id=item_id,
        text=text,
        ts=parse_timestamp(value["ts"]),
    )
    _check_meta(meta, "user_id", event.user_id, event.ts)
    return event


def parse_item(raw: bytes | str | dict | None, meta: MessageMeta | None = None) -> ItemEvent:
    """Validate one catalogue message; raises EventError with the reason when it breaks the contract.

    With `meta` the key must equal item_id. Any exception while judging the message becomes an EventError.
    """
    return _judged_alone(_parse_item, raw, meta)


def _parse_item(raw: bytes | str | dict | None, meta: MessageMeta | None) -> ItemEvent:
    value = _decode(raw)
    item_id = _str_field(value, "item_id", required=True)
    deleted = value.get("deleted", False)
    if not isinstance(deleted, bool):
        raise EventError("field 'deleted' must be true or false")
    title = _text_field(value, "title", required=not deleted) or ""
    tags = value.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise EventError("field 'tags' must be a list of strings")
    if len(tags) > MAX_TAGS:
        raise EventError(f"field 'tags' has more than {MAX_TAGS} entries")
    item = ItemEvent(
        item_id=item_id,  # type: ignore[arg-type]
        title=title,
        text=_text_field(value, "text", required=False) or "",
        category=_str_field(value, "category", required=False) or "",
        tags=tuple(_checked_text(t, "tags", 4 * MAX_ID_LENGTH) for t in tags),
        deleted=deleted,
    )
    _check_meta(meta, "item_id", item.item_id)
    return item


def dead_letter(raw: bytes | None, key: bytes | None, reason: str, topic: str, partition: int, offset: int,
                *, copy_value: bool = True) -> dict[str, Any]:
    """The DLQ record: reason, source position, and the original value's sha256, length and first bytes.

    Only the first DLQ_VALUE_BYTES are copied (base64, plus text when that prefix decodes), the key and the reason
    are capped too, so that a record always fits the broker whatever the message was; `value_truncated` says so.
    copy_value=False leaves the value out altogether (the last resort when a record could not be sent).
    """
    head = raw[:DLQ_VALUE_BYTES] if raw is not None and copy_value else None
    text: str | None
    try:
        text = head.decode("utf-8") if head is not None else None
    except UnicodeDecodeError:
        text = None
    key_text = key.decode("utf-8", "replace") if key is not None else None
    return {
        "reason": reason[:DLQ_REASON_CHARS],
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "key": key_text[:DLQ_KEY_CHARS] if key_text is not None else None,
        "value_sha256": hashlib.sha256(raw).hexdigest() if raw is not None else None,
        "value_length": len(raw) if raw is not None else None,
        "value_truncated": raw is not None and (head is None or len(head) < len(raw)),
        "value_b64": base64.b64encode(head).decode("ascii") if head is not None else None,
        "value_text": text,
    }


def list_title(title: str) -> str:
    """An item's title as a recommendation record carries it: at most LIST_TITLE_CHARS characters ("…" when cut).

    Titles may be 16 KiB each and JSON escaping can multiply a character's bytes by 12 (a control character by 6),
    so ten full titles could pass the producer's 1 MB limit; the list only needs enough to show the item."""
    return title if len(title) <= LIST_TITLE_CHARS else title[: LIST_TITLE_CHARS - 1] + "…"


def split_by_event_ids(record: dict[str, Any], fits: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The recommendation record as one or more records that each `fits` (the encoded size is under the limit):
    the same list, each carrying a consecutive part of `event_ids`, in order, and as `event_id` the last of its
    part. One user's batch may hold up to
    batch_size events with ids of up to MAX_ID_LENGTH characters (~3 KB each once JSON-escaped), so a list can
    answer more ids than one message holds; every id stays in exactly one record, so a consumer that accounts
    for events by `event_ids` still sees each once. A record that does not fit even with a single id is returned
    alone: the sender then reports it as too large."""
    if fits(record) or len(record["event_ids"]) <= 1:
        return [record]
    half = len(record["event_ids"]) // 2
    return [part for ids in (record["event_ids"][:half], record["event_ids"][half:])
            for part in split_by_event_ids({**record, "event_ids": ids, "event_id": ids[-1]}, fits)]
