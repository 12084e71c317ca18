"""User interest by incremental dynamic attention: decayed, multi-slot, log-space running sums (pure numpy, no I/O).

Model (batch form, what the running sums equal). Each event i of a slot has embedding e_i (L2-normalised here),
sign g_i (+1, or -1 for `dislike`), effective time t_i (the running max of arrival timestamps, so a late event
counts as "now", age 0) and a score fixed when it arrives:

    s_i = <e_i, u(t_i)> / tau + log w(type_i)

where u(t_i) is the current interest of the slot it joins; a slot opened by e_i is seeded with u = e_i, so
s_i = 1/tau + log w (an event identical to the interest scores the same whether it opens or joins the slot).
With a_i = exp(s_i - lambda * age_i) / sum_j exp(s_j - lambda * age_j) over the slot's events (ages in hours):

    u = sum_i g_i a_i e_i          (attention-weighted mean; dislikes subtract)
    net mass = sum_{g=+1} exp(s_i - lambda age_i) - sum_{g=-1} exp(s_i - lambda age_i)

A slot is usable when its net mass is positive; its query vector is u / |u| and its weight is its net mass
normalised over usable slots. Decay is common to all slots, so only event arrivals change u and the weights.

Incremental form: per slot, D = sum g_i exp(l_i) e_i, P = sum_{+} exp(l_i), N = sum_{-} exp(l_i), all stored as
exp(log_offset) * (stored values) at the state's reference time last_ts. A time step dt only subtracts
lambda*dt/3600 from every log_offset (O(slots)); adding an event of log weight s rescales the slot to
max(log_offset, s) first, so stored values stay in [0, event count] after any gap or score size. u = D / (P + N).

Slot assignment: a positive event joins the slot with the highest cosine(e, D) if that is >= slot_threshold,
else opens a new slot; when max_slots are in use the slot with the smallest decayed net mass is evicted and the
event opens a new slot in its place (eviction rather than merging: attention would give a dissimilar event
almost no weight in the merged slot, so a new interest could never form; the weakest slot is the stalest).
A dislike joins the most similar existing slot whatever the cosine (its attention weight exp(cos/tau) already
makes unrelated dislikes negligible) and never opens a slot, so a dislike alone gives no interest.
"""

from __future__ import annotations

import functools
import hashlib
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

from stream_app.core.defaults import setting_default as _default

if TYPE_CHECKING:
    from stream_app.settings import Settings

POSITIVE_TYPES: tuple[str, ...] = ("view", "click", "search", "review", "cart", "purchase")
DISLIKE = "dislike"
EVENT_TYPES: frozenset[str] = frozenset(POSITIVE_TYPES + (DISLIKE,))
SECONDS_PER_HOUR = 3600.0


def default_type_weights() -> Mapping[str, float]:
    """The event type weights of Settings' weight_* defaults (view 1 ... purchase 5)."""
    return MappingProxyType({name: float(_default(f"weight_{name}")) for name in POSITIVE_TYPES})


def parse_exclude_types(value: str) -> frozenset[str]:
    """A comma-separated list of event types (Settings.exclude_types) as a set."""
    return frozenset(t.strip() for t in value.split(",") if t.strip())


@dataclass(frozen=True)
class InterestParams:
    """Knobs of the interest model; timestamps are epoch seconds, decay is per hour of age (defaults: Settings'
    fields of the same names, weight_* for the event types)."""

    temperature: float = field(default_factory=lambda: _default("temperature"))
    decay_per_hour: float = field(default_factory=lambda: _default("decay_per_hour"))
    max_slots: int = field(default_factory=lambda: _default("max_slots"))
    slot_threshold: float = field(default_factory=lambda: _default("slot_threshold"))
    type_weights: Mapping[str, float] = field(default_factory=default_type_weights)
    dislike_weight: float = field(default_factory=lambda: _default("weight_dislike"))
    recent_items: int = field(default_factory=lambda: _default("recent_items"))
    # event types whose item joins the user's exclusion set (purchase and dislike always do)
    exclude_types: frozenset[str] = field(default_factory=lambda: parse_exclude_types(_default("exclude_types")))

    def __post_init__(self) -> None:
        """Reject values that would make the attention meaningless or non-finite; freeze the weight map."""
        if not (self.temperature > 0 and math.isfinite(1.0 / self.temperature)):
            raise ValueError(f"temperature must be > 0 with finite 1/temperature, got {self.temperature}")
        if not (self.decay_per_hour >= 0 and math.isfinite(self.decay_per_hour)):
            raise ValueError(f"decay_per_hour must be finite and >= 0, got {self.decay_per_hour}")
        if self.max_slots < 1:
            raise ValueError(f"max_slots must be >= 1, got {self.max_slots}")
        if math.isnan(self.slot_threshold):
            raise ValueError("slot_threshold is NaN")
        if self.recent_items < 0:
            raise ValueError(f"recent_items must be >= 0, got {self.recent_items}")
        weights = dict(self.type_weights)
        if set(weights) != set(POSITIVE_TYPES):
            raise ValueError(f"type_weights needs exactly {sorted(POSITIVE_TYPES)} (dislike uses dislike_weight)")
        for name, value in list(weights.items()) + [(DISLIKE, self.dislike_weight)]:
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"weight of {name!r} must be finite and > 0, got {value}")
        object.__setattr__(self, "type_weights", MappingProxyType({k: float(v) for k, v in weights.items()}))
        excluded = frozenset(self.exclude_types) | {"purchase", DISLIKE}
        if not excluded <= EVENT_TYPES:
            raise ValueError(f"exclude_types must be event types, got {sorted(excluded - EVENT_TYPES)}")
        object.__setattr__(self, "exclude_types", excluded)

    @classmethod
    def from_settings(cls, settings: Settings) -> InterestParams:
        """Build the parameters from the service settings (weight_* fields map to event types)."""
        return cls(
            temperature=settings.temperature,
            decay_per_hour=settings.decay_per_hour,
            max_slots=settings.max_slots,
            slot_threshold=settings.slot_threshold,
            type_weights={name: getattr(settings, f"weight_{name}") for name in POSITIVE_TYPES},
            dislike_weight=settings.weight_dislike,
            recent_items=settings.recent_items,
            exclude_types=parse_exclude_types(settings.exclude_types),
        )

    def log_weight(self, event_type: str) -> float:
        """log w(type), the prior part of an event's attention score; ValueError for unknown types."""
        if event_type == DISLIKE:
            return math.log(self.dislike_weight)
        try:
            return math.log(self.type_weights[event_type])
        except (KeyError, TypeError):
            raise ValueError(f"unknown event type {event_type!r}; expected one of {sorted(EVENT_TYPES)}") from None


@dataclass(eq=False)
class UserState:
    """One user's interest: per-slot scaled running sums at time last_ts, plus recent item ids (newest last)."""

    dim: int
    last_ts: float
    n_events: int
    log_offset: np.ndarray  # (k,) float64: slot sums = exp(log_offset) * stored values, at last_ts
    pos_mass: np.ndarray  # (k,) float64: P / exp(log_offset), positive attention mass
    neg_mass: np.ndarray  # (k,) float64: N / exp(log_offset), dislike attention mass
    vectors: np.ndarray  # (k, dim) float32: D / exp(log_offset), signed attention-weighted sum of embeddings
    recent: tuple[str, ...] = ()
    # Effectively-once: 64-bit digests of the user's last event ids (oldest first), see remember_events.
    seen_events: tuple[int, ...] = ()
    excluded: frozenset[int] = frozenset()  # item_key() of every item of an exclude_types event (see below)

    @property
    def n_slots(self) -> int:
        """Number of interest slots in use."""
        return int(self.log_offset.shape[0])


def new_state(dim: int) -> UserState:
    """An empty state for embeddings of size dim."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return UserState(
        dim=int(dim),
        last_ts=0.0,
        n_events=0,
        log_offset=np.zeros(0, np.float64),
        pos_mass=np.zeros(0, np.float64),
        neg_mass=np.zeros(0, np.float64),
        vectors=np.zeros((0, dim), np.float32),
    )


def _unit(embedding: np.ndarray, dim: int) -> np.ndarray:
    """The embedding as a float64 unit vector; ValueError for wrong size, zero or non-finite input."""
    e = np.asarray(embedding, dtype=np.float64).reshape(-1)
    if e.shape[0] != dim:
        raise ValueError(f"embedding has {e.shape[0]} values, state dim is {dim}")
    norm = float(np.linalg.norm(e))
    if not (norm > 0 and math.isfinite(norm)):
        raise ValueError("embedding must be finite and non-zero")
    return e / norm


def _net_log_mass(log_offset: np.ndarray, pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """log(P - N) per slot in the common reference, -inf where the net mass is not positive."""
    net = pos - neg
    out = np.full(net.shape, -np.inf)
    ok = net > 0
    out[ok] = log_offset[ok] + np.log(net[ok])
    return out


def choose_slot(cosines: np.ndarray, net_log_mass: np.ndarray, dislike: bool, params: InterestParams) -> tuple[str, int]:
    """Where an event goes: ("join", k), ("open", k == n_slots), ("evict", k) or ("drop", -1) for a slotless dislike."""
    n = int(cosines.shape[0])
    if n == 0:
        return ("drop", -1) if dislike else ("open", 0)
    best = int(np.argmax(cosines))
    if dislike or cosines[best] >= params.slot_threshold:
        return "join", best
    if n < params.max_slots:
        return "open", n
    return "evict", int(np.argmin(net_log_mass))


def _push_recent(recent: tuple[str, ...], item_id: str | None, cap: int) -> tuple[str, ...]:
    """Recent ids with item_id moved/added at the end, at most cap long (a re-seen id is kept once)."""
    if item_id is None:
        return recent[len(recent) - cap :] if len(recent) > cap else recent  # only trims when cap shrank
    if not isinstance(item_id, str) or not item_id or len(item_id.encode("utf-8")) > 0xFFFF:
        raise ValueError(f"item_id must be None or a non-empty str under 64 KiB, got {item_id!r}")
    items = [r for r in recent if r != item_id]
    items.append(item_id)
    return tuple(items[max(0, len(items) - cap) :])


def apply_event(
    state: UserState,
    embedding: np.ndarray,
    event_type: str,
    ts: float,
    item_id: str | None,
    params: InterestParams,
) -> UserState:
    """A new state with one behaviour event folded in (O(slots * dim)); the input state is not modified."""
    log_w = params.log_weight(event_type)
    e = _unit(embedding, state.dim)
    ts = float(ts)
    if not math.isfinite(ts):
        raise ValueError(f"timestamp must be finite, got {ts}")
    if state.n_events == 0:
        t, shift = ts, 0.0
    else:
        t = max(ts, state.last_ts)  # late events count as arriving now (age 0), never move time backwards
        shift = params.decay_per_hour * (t - state.last_ts) / SECONDS_PER_HOUR
    log_offset = state.log_offset - shift
    pos, neg, vectors = state.pos_mass.copy(), state.neg_mass.copy(), state.vectors.copy()

    while log_offset.shape[0] > params.max_slots:  # params shrank since the state was written
        drop = int(np.argmin(_net_log_mass(log_offset, pos, neg)))
        log_offset, pos, neg = (np.delete(a, drop) for a in (log_offset, pos, neg))
        vectors = np.delete(vectors, drop, axis=0)

    dislike = event_type == DISLIKE
    norms = np.linalg.norm(vectors, axis=1).astype(np.float64)
    dots = vectors.astype(np.float64) @ e
    cosines = np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)
    action, k = choose_slot(cosines, _net_log_mass(log_offset, pos, neg), dislike, params)

    if action == "join":
        s = dots[k] / (pos[k] + neg[k]) / params.temperature + log_w
        c = log_offset[k]
        if s > c:
            scale, a, log_offset[k] = math.exp(c - s), 1.0, s
        else:
            scale, a = 1.0, math.exp(s - c)
        sign = -1.0 if dislike else 1.0
        vectors[k] = (vectors[k].astype(np.float64) * scale + sign * a * e).astype(np.float32)
        pos[k] = pos[k] * scale + (0.0 if dislike else a)
        neg[k] = neg[k] * scale + (a if dislike else 0.0)
    elif action in ("open", "evict"):
        s = 1.0 / params.temperature + log_w  # seeded slot: u = e, <e, e> = 1
        if action == "open":
            log_offset = np.append(log_offset, s)
            pos, neg = np.append(pos, 1.0), np.append(neg, 0.0)
            vectors = np.vstack([vectors, e.astype(np.float32)[None, :]])
        else:
            log_offset[k], pos[k], neg[k] = s, 1.0, 0.0
            vectors[k] = e.astype(np.float32)

    return UserState(
        dim=state.dim,
        last_ts=t,
        n_events=state.n_events + 1,
        log_offset=log_offset,
        pos_mass=pos,
        neg_mass=neg,
        vectors=vectors,
        recent=_push_recent(state.recent, item_id, params.recent_items),
        seen_events=state.seen_events,
        excluded=state.excluded | {item_key(item_id)}
        if item_id is not None and event_type in params.exclude_types else state.excluded,
    )


def _vectors_and_weights(directions: np.ndarray, net_log_mass: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit query vectors and softmax-normalised weights of the usable slots, heaviest first."""
    norms = np.linalg.norm(directions, axis=1) if directions.size else np.zeros(0)
    usable = np.isfinite(net_log_mass) & (norms > 0)
    if not usable.any():
        return np.zeros((0, dim), np.float32), np.zeros(0, np.float64)
    lm = net_log_mass[usable]
    w = np.exp(lm - lm.max())
    w /= w.sum()
    vecs = directions[usable] / norms[usable][:, None]
    order = np.argsort(-w, kind="stable")
    return vecs[order].astype(np.float32), w[order]


def interest_vectors(state: UserState, now: float, params: InterestParams) -> tuple[np.ndarray, np.ndarray]:
    """(k, dim) float32 unit query vectors and k weights summing to 1 (k = 0 without a usable slot).

    Weights are the slots' decayed net masses at `now`, normalised; decay is shared by all slots, so they do not
    change between events.
    """
    return _vectors_and_weights(state.vectors.astype(np.float64), slot_log_masses(state, now, params), state.dim)


def slot_log_masses(state: UserState, now: float, params: InterestParams) -> np.ndarray:
    """log of each slot's decayed net attention mass at `now` (-inf for slots with no positive net mass)."""
    age_h = max(float(now) - state.last_ts, 0.0) / SECONDS_PER_HOUR if state.n_events else 0.0
    return _net_log_mass(state.log_offset, state.pos_mass, state.neg_mass) - params.decay_per_hour * age_h


def consumed_items(state: UserState) -> list[str]:
    """Recent item ids the user interacted with (including dislikes), newest last: what the counters score from and
    the explanations show (exclusion uses `exclusions`, which holds every excluded item)."""
    return list(state.recent)


# --------------------------------------------------------------------------------------------------------------
# Exclusion set: every item the user bought, disliked (or, per exclude_types, viewed/carted), however long ago.
# Stored as 64-bit keys (blake2b of the id): 8 bytes per item whatever the id's length; two different ids share a
# key with probability 2^-64, so for a user with n excluded items a given other item is wrongly excluded with
# probability n / 2^64 (< 1e-15 for n = 10,000): exact for every practical purpose, no false negatives ever.


@functools.lru_cache(maxsize=1 << 16)
def item_key(item_id: str) -> int:
    """The 64-bit key of an item id in exclusion sets (hot ids cached)."""
    return int.from_bytes(hashlib.blake2b(item_id.encode("utf-8"), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class Exclusions:
    """A user's exclusion set as a container of item ids (membership hashes the id)."""

    keys: frozenset[int]

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and item_key(item_id) in self.keys

    def __len__(self) -> int:
        return len(self.keys)


def exclusions(state: UserState) -> Exclusions:
    """The items never to recommend to this user again."""
    return Exclusions(state.excluded)


# --------------------------------------------------------------------------------------------------------------
# Reference (non-incremental) formula: recomputes every slot's interest from its full event list at each step.


@dataclass(frozen=True)
class BatchSlot:
    """A slot recomputed from its whole history: member indices, their scores, mean u and net log mass."""

    members: tuple[int, ...]
    scores: np.ndarray
    mean: np.ndarray
    net_log_mass: float


def _batch_slot_summary(
    embs: list[np.ndarray], signs: list[float], scores: list[float], times: list[float], t: float, lam: float
) -> tuple[np.ndarray, float]:
    """u = sum g_i a_i e_i and log(sum g_i exp(s_i - lam*age_i)) recomputed from scratch at time t."""
    logits = np.asarray(scores) - lam * (t - np.asarray(times)) / SECONDS_PER_HOUR
    peak = logits.max()
    raw = np.exp(logits - peak)
    g = np.asarray(signs)
    mean = (raw * g) @ np.asarray(embs) / raw.sum()
    net = float(raw @ g)
    return mean, (peak + math.log(net)) if net > 0 else -math.inf


def batch_slots(history: Sequence[tuple[np.ndarray, str, float]], params: InterestParams) -> list[BatchSlot]:
    """Replay [(embedding, type, ts)] with the batch formula (O(n^2 d)); the reference apply_event must match."""
    slots: list[dict[str, list]] = []
    t = -math.inf
    for idx, (embedding, event_type, ts) in enumerate(history):
        log_w = params.log_weight(event_type)
        e = _unit(embedding, len(np.asarray(embedding).reshape(-1)))
        t = max(t, float(ts))
        summaries = [
            _batch_slot_summary(sl["e"], sl["g"], sl["s"], sl["t"], t, params.decay_per_hour) for sl in slots
        ]
        means = [m for m, _ in summaries]
        cosines = np.array([float(m @ e) / np.linalg.norm(m) if np.linalg.norm(m) > 0 else 0.0 for m in means])
        net_lm = np.array([lm for _, lm in summaries])
        dislike = event_type == DISLIKE
        action, k = choose_slot(cosines, net_lm, dislike, params)
        sign = -1.0 if dislike else 1.0
        if action == "join":
            s = float(means[k] @ e) / params.temperature + log_w
            sl = slots[k]
            for key, val in (("i", idx), ("e", e), ("g", sign), ("s", s), ("t", t)):
                sl[key].append(val)
        elif action in ("open", "evict"):
            fresh = {"i": [idx], "e": [e], "g": [1.0], "s": [1.0 / params.temperature + log_w], "t": [t]}
            if action == "open":
                slots.append(fresh)
            else:
                slots[k] = fresh
    out = []
    for sl in slots:
        mean, lm = _batch_slot_summary(sl["e"], sl["g"], sl["s"], sl["t"], t, params.decay_per_hour)
        out.append(BatchSlot(tuple(sl["i"]), np.asarray(sl["s"]), mean, lm))
    return out


def batch_interest(
    history: Sequence[tuple[np.ndarray, str, float]], params: InterestParams
) -> tuple[np.ndarray, np.ndarray]:
    """interest_vectors' output computed by the batch formula from the whole history (for tests and docs)."""
    slots = batch_slots(history, params)
    if not slots:
        dim = len(np.asarray(history[0][0]).reshape(-1)) if history else 0
        return np.zeros((0, dim), np.float32), np.zeros(0, np.float64)
    means = np.stack([sl.mean for sl in slots])
    return _vectors_and_weights(means, np.array([sl.net_log_mass for sl in slots]), means.shape[1])


# --------------------------------------------------------------------------------------------------------------
# Effectively-once: the state remembers the digests of its last event ids, so a redelivered event (after a crash,
# a rebalance or a producer retry) is recognised and not applied twice. Digests are 64-bit blake2b: 8 bytes per
# id whatever its length; two distinct ids of one user collide with probability ~n^2 / 2^65.


def event_digest(event_id: str) -> int:
    """The 64-bit digest an event id is remembered by."""
    return int.from_bytes(hashlib.blake2b(event_id.encode("utf-8"), digest_size=8).digest(), "little")


def has_seen(state: UserState, event_id: str) -> bool:
    """Whether the event was already applied to this state (within its remembered window)."""
    return event_digest(event_id) in state.seen_events


def remember_events(state: UserState, event_ids: Sequence[str], cap: int) -> UserState:
    """The state with event_ids added to the remembered ones, keeping the newest `cap` (0 remembers none)."""
    seen = state.seen_events + tuple(event_digest(e) for e in event_ids)
    return replace(state, seen_events=seen[max(0, len(seen) - cap):] if cap > 0 else ())


# --------------------------------------------------------------------------------------------------------------
# Compact binary storage.

_MAGIC = b"SAUI"
_VERSION = 1
# magic, version, reserved, n_slots, dim, n_recent, n_events, last_ts
_HEADER = struct.Struct("<4sBBHIIQd")
_LEN = struct.Struct("<H")
_MAX_DIM = 1 << 16
# Optional sections after the recent ids, each: 4-byte tag, u32 count, payload. A state without them decodes
# with the defaults, so states written before a section existed stay readable.
_SECTION = struct.Struct("<4sI")
_SEEN_TAG = b"EVID"  # seen_events: count x u64 digests
_EXCL_TAG = b"EXCL"  # excluded: count x u64 item keys, sorted (see the exclusion set above)


def encode_state(state: UserState) -> bytes:
    """Pack the state: header, float64 log offsets and masses, float32 (k, dim) sums, length-prefixed utf-8 ids."""
    k = state.n_slots
    if k > 0xFFFF:
        raise ValueError("too many slots to encode")
    parts = [
        _HEADER.pack(_MAGIC, _VERSION, 0, k, state.dim, len(state.recent), state.n_events, state.last_ts),
        np.ascontiguousarray(state.log_offset, "<f8").tobytes(),
        np.ascontiguousarray(state.pos_mass, "<f8").tobytes(),
        np.ascontiguousarray(state.neg_mass, "<f8").tobytes(),
        np.ascontiguousarray(state.vectors, "<f4").tobytes(),
    ]
    for item_id in state.recent:
        raw = item_id.encode("utf-8")
        parts.append(_LEN.pack(len(raw)))
        parts.append(raw)
    if state.seen_events:  # --- section: seen event digests ---
        parts.append(_SECTION.pack(_SEEN_TAG, len(state.seen_events)))
        parts.append(np.asarray(state.seen_events, "<u8").tobytes())
    if state.excluded:  # --- section: exclusion set ---
        parts.append(_SECTION.pack(_EXCL_TAG, len(state.excluded)))
        parts.append(np.array(sorted(state.excluded), dtype="<u8").tobytes())
    return b"".join(parts)


def decode_state(data: bytes) -> UserState:
    """Unpack encode_state's bytes; ValueError for anything malformed, truncated, trailing or non-finite."""
    try:
        return _decode(memoryview(bytes(data)))
    except (struct.error, UnicodeDecodeError, TypeError, OverflowError) as exc:
        raise ValueError(f"not an encoded user state: {exc}") from None


def _decode(buf: memoryview) -> UserState:
    """decode_state's body; struct/unicode errors are converted by the caller."""
    if len(buf) < _HEADER.size:
        raise ValueError("not an encoded user state: too short")
    magic, version, reserved, k, dim, n_recent, n_events, last_ts = _HEADER.unpack_from(buf, 0)
    if magic != _MAGIC or version != _VERSION or reserved != 0:
        raise ValueError("not an encoded user state: bad magic/version")
    if not (1 <= dim <= _MAX_DIM) or not math.isfinite(last_ts) or (n_events == 0 and k > 0):
        raise ValueError("not an encoded user state: bad header values")
    pos = _HEADER.size
    fixed = 3 * 8 * k + 4 * k * dim
    if len(buf) < pos + fixed + 2 * n_recent:
        raise ValueError("not an encoded user state: truncated")
    scalars = np.frombuffer(buf, "<f8", 3 * k, pos).astype(np.float64).reshape(3, k)
    log_offset, pos_mass, neg_mass = scalars[0].copy(), scalars[1].copy(), scalars[2].copy()
    vectors = np.frombuffer(buf, "<f4", k * dim, pos + 24 * k).astype(np.float32).reshape(k, dim)
    pos += fixed
    if np.isnan(log_offset).any() or (log_offset == np.inf).any():
        raise ValueError("not an encoded user state: bad log offsets")
    masses = scalars[1:]
    if not (np.isfinite(masses).all() and (masses >= 0).all()):
        raise ValueError("not an encoded user state: bad masses")
    if not np.isfinite(vectors).all():
        raise ValueError("not an encoded user state: non-finite vectors")
    raw, end = buf.obj, len(buf)  # the bytes object: indexing and slicing it is faster than a memoryview
    recent = []
    for _ in range(n_recent):
        if pos + 2 > end:
            raise ValueError("not an encoded user state: truncated item ids")
        n = raw[pos] | (raw[pos + 1] << 8)
        pos += 2
        if n == 0 or pos + n > end:
            raise ValueError("not an encoded user state: bad item id")
        recent.append(raw[pos : pos + n].decode("utf-8"))
        pos += n
    seen: tuple[int, ...] = ()
    excluded: frozenset[int] | None = None
    while pos != end:  # optional sections
        tag, count = _SECTION.unpack_from(buf, pos)
        pos += _SECTION.size
        if tag == _SEEN_TAG and not seen and pos + 8 * count <= end:  # --- section: seen event digests ---
            seen = tuple(int(x) for x in np.frombuffer(buf, "<u8", count, pos))
            pos += 8 * count
        elif tag == _EXCL_TAG and excluded is None and pos + 8 * count <= end:  # --- section: exclusion set ---
            excluded = frozenset(np.frombuffer(buf, "<u8", count, pos).tolist())
            if len(excluded) != count:
                raise ValueError("not an encoded user state: repeated exclusion keys")
            pos += 8 * count
        else:
            raise ValueError("not an encoded user state: bad trailing section")
    return UserState(dim, last_ts, n_events, log_offset, pos_mass, neg_mass, vectors, tuple(recent), seen,
                     excluded or frozenset())
