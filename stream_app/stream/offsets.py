"""Re-read what Faust skipped: the offsets of a partition must reach the agent without a hole.

faust-streaming 0.15 can lose a message right after a partition is assigned (measured with two workers and a
SIGTERM: 2 of 480 events lost per takeover). Records fetched before the recovery's seek to the committed offsets
reach the stream after it; Faust then takes the offsets between its reset read position and such a record for a
gap in the topic (as compaction leaves one), acks them, and drops the re-fetched records as already read, so a
message that was in the stream's buffer when the seek cleared it is never delivered again.

The input topics are neither compacted nor transactional: every offset holds a message, so a hole in the offsets
an agent sees is a message Faust skipped. OffsetGuard keeps, per partition, the next offset the agent must see
(from the group's committed offset when the partition is assigned). Before a batch is served, admit() cuts each
partition at its first hole: the records at or past it are not served now, and the agent seeks back there, so the
skipped message and the records after it come again and are served in offset order. (Serving them first and the
skipped message after them, as a first version did, applied one user's events out of order: the stored interest
and recent items then differ from the fold of the user's events, as a SIGKILL test in CI found.) Redeliveries
below the next offset are served again (the user-state table's event-id dedupe recognises them; items are
re-indexed only if changed). The agent (stream.app.admitted) keeps the cut events and the hole out of Faust's
commits until the re-read is served, so a crash or a rebalance before it loses nothing.

A partition with no committed offset (its previous owner died before its first commit) starts at the log start,
as `consumer_auto_offset_reset="earliest"` reads it. There Faust loses records another way (measured with two
workers and a SIGKILL, about 1 takeover in 10 under load): it drops records fetched while its flow is stopped and
seeks back to the committed offsets, but aiokafka's `seek_to_committed` leaves a partition without a committed
offset (or with 0) where it is, past the dropped records; the agent never sees them nor anything that would show a
hole. So idle() is also called periodically: a partition whose consumer position stays past the next offset its
agent must see while the agent takes nothing was fetched and never delivered, and is sought back too.

An offset that is still missing after MAX_SEEKS seeks back to it is taken as really absent (a topic an operator
made compacted, or a retention that deleted it while the group was away) and passed over, so a real gap never
makes the agent seek forever; but never past an offset the agent was handed and cut, which exists and comes back
only with a re-read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Hashable

log = logging.getLogger(__name__)
MAX_SEEKS = 3  # seeks back to one missing offset before it is taken as absent from the topic
RESEEK_WARN_EVERY = 50  # uncounted seeks back (records fetched before a seek took effect) between two warnings
IDLE_CHECK_S = 2.0  # how often idle() runs: records fetched and never delivered are re-read within ~2-3 of these


@dataclass(frozen=True)
class Admission:
    """What of a batch to serve, per partition: records at or past cut[tp] are not served (they come again after
    the seek back to seeks[tp]); absent[tp]: ranges [first, end) of offsets taken as absent from the topic and passed
    over (the consumer's commits must pass them too)."""

    cut: dict[Hashable, int] = field(default_factory=dict)
    seeks: dict[Hashable, int] = field(default_factory=dict)
    absent: dict[Hashable, list[tuple[int, int]]] = field(default_factory=dict)


def _add_runs(runs: list[tuple[int, int]], offsets: list[int]) -> list[tuple[int, int]]:
    """runs (sorted, disjoint [first, end) ranges) with the sorted offsets added, merged into as few runs as may be."""
    merged: list[tuple[int, int]] = []
    for first, end in sorted(runs + [(o, o + 1) for o in offsets]):
        if merged and first <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((first, end))
    return merged


def _first_missing(ahead: list[int], expected: int) -> int | None:
    """The first offset from `expected` on that is not in `ahead` (sorted, all >= expected) but is below its last;
    None when ahead runs on from expected without a hole."""
    if ahead and ahead[0] > expected:
        return expected
    return next((a + 1 for a, b in zip(ahead, ahead[1:]) if b > a + 1), None)


class OffsetGuard:
    """Per partition, the next offset the agent must see; admit() (before each batch) and idle() (periodically,
    while the agent is idle) return the seeks that close holes."""

    def __init__(self) -> None:
        self.next: dict[Hashable, int] = {}
        self.high: dict[Hashable, int] = {}  # partition -> the highest offset its agent was handed since assigned
        self.seeks: dict[Hashable, tuple[int, int]] = {}  # partition -> (missing offset, seeks back to it so far)
        self.suspect: dict[Hashable, tuple[int, int]] = {}  # partition -> (expected, position) at the last idle()
        self.reseeks: dict[Hashable, int] = {}  # partition -> uncounted seeks back to its missing offset so far
        self.handed: dict[Hashable, list[tuple[int, int]]] = {}  # partition -> runs [first, end) of offsets handed
        # to the agent and cut, not yet served

    def assigned(self, partitions: Iterable[Hashable]) -> None:
        """The partitions are (re)assigned: their next offset comes from their start offset again."""
        for tp in partitions:
            self.next.pop(tp, None)
            self.high.pop(tp, None)
            self.seeks.pop(tp, None)
            self.reseeks.pop(tp, None)
            self.handed.pop(tp, None)
            self.suspect.pop(tp, None)

    def partitions(self) -> set[Hashable]:
        """Every partition the guard keeps anything of."""
        return set(self.next) | set(self.high) | set(self.seeks) | set(self.suspect) | set(self.handed)

    def waiting(self) -> dict[Hashable, int]:
        """Partition -> the offset it waits to read again (a seek back is pending)."""
        return {tp: missing for tp, (missing, _) in self.seeks.items()}

    def without_next(self, partitions: Iterable[Hashable]) -> list[Hashable]:
        """The partitions whose next offset is not known yet (none served since assigned): only their start
        offsets are needed by admit() and idle()."""
        return [tp for tp in partitions if tp not in self.next]

    def admit(self, offsets: Mapping[Hashable, Iterable[int]], starts: Mapping[Hashable, int | None]
              ) -> Admission:
        """Before a batch is served: offsets in it per partition; starts: the offset each partition's agent starts
        from once assigned (the group's committed offset, the next to read, or the log start where none is
        committed or retention removed it), needed only for partitions without_next(). Where it is unknown (the
        broker did not say), the first batch's first offset stands in: a hole before it goes unseen, but later
        ones are caught (a review found that waiting for a start known later hid holes between batches until then,
        and took a start committed meanwhile for a hole).

        A partition whose offsets start past the expected one, or have a hole, is cut there: its records at or
        past the hole wait, unserved, for the seek back (Admission.seeks), which brings the missing message and
        them again in order. Offsets below the expected one are redeliveries and are served (the event-id dedupe
        recognises them). A seek back is counted as a try only when the batch shows that the partition was read
        again from at or below the highest offset seen and the hole is still there; a batch that merely continues
        past the highest offset was fetched before the seek took effect (or Faust dropped the re-read under it:
        its fetch loop, blocked handing a record to a full stream buffer, sets its read offset past the seek's once
        it goes on), and is sought back again without counting."""
        cut: dict[Hashable, int] = {}
        seeks: dict[Hashable, int] = {}
        absent: dict[Hashable, list[tuple[int, int]]] = {}
        for tp, seen in offsets.items():
            seen = sorted(set(seen))
            if not seen:
                continue
            self.suspect.pop(tp, None)
            prior_high = self.high.get(tp)
            self.high[tp] = seen[-1] if prior_high is None else max(prior_high, seen[-1])
            expected = self.next.get(tp)
            if expected is None:  # the first batch since assigned: from the start, or (unknown) its first offset
                start = starts.get(tp)
                expected = start if start is not None else seen[0]
            ahead = [o for o in seen if o >= expected]
            while True:
                missing = _first_missing(ahead, expected)
                if missing is None:
                    self.seeks.pop(tp, None)
                    self.reseeks.pop(tp, None)
                    self._advance(tp, max(expected, ahead[-1] + 1) if ahead else expected)
                    break
                resume = next(o for o in ahead if o > missing)
                continuing = (prior_high is not None and resume > prior_high
                              and self.seeks.get(tp, (None,))[0] == missing)
                if continuing:
                    self._reseek(tp, missing)
                if continuing or self._seek_back(tp, missing, passed_to=resume):
                    cut[tp] = seeks[tp] = missing
                    self.handed[tp] = _add_runs(self.handed.get(tp, []), [o for o in ahead if o > missing])
                    break
                expected = self.next[tp]  # passed over: look on from there
                absent.setdefault(tp, []).append((missing, expected))
                ahead = [o for o in ahead if o >= expected]
        return Admission(cut, seeks, absent)

    def idle(self, positions: Mapping[Hashable, int | None], starts: Mapping[Hashable, int | None]
             ) -> Admission:
        """Periodically: the consumer's position (the next offset it hands over) of each partition whose agent has
        taken no batch since the previous call and has none in hand. A position past the next offset the agent
        must see, the same at two calls in a row, means records were handed over and never delivered (had they
        been in the stream's buffer, the idle agent would have taken them): Admission.seeks names that offset, to
        seek back to (absent: what was passed over after MAX_SEEKS). A partition missing from positions (its agent
        was busy) starts over."""
        seeks: dict[Hashable, int] = {}
        absent: dict[Hashable, list[tuple[int, int]]] = {}
        for tp in set(self.suspect) - set(positions):
            del self.suspect[tp]
        for tp, position in positions.items():
            expected = self.next.get(tp, starts.get(tp))
            if position is None or expected is None or position <= expected:
                self.suspect.pop(tp, None)
            elif self.suspect.get(tp) != (expected, position):
                self.suspect[tp] = (expected, position)
            else:
                del self.suspect[tp]
                if self._seek_back(tp, expected, passed_to=position):
                    seeks[tp] = expected
                else:
                    absent[tp] = [(expected, self.next[tp])]
        return Admission(seeks=seeks, absent=absent)

    def _reseek(self, tp: Hashable, missing: int) -> None:
        """One more seek back to the same offset for records that continue past the highest offset seen: never
        counted as a try (the re-read has not come, so nothing shows the offset absent), but logged every
        RESEEK_WARN_EVERY times, since a partition whose re-read never comes serves nothing."""
        self.reseeks[tp] = self.reseeks.get(tp, 0) + 1
        if self.reseeks[tp] % RESEEK_WARN_EVERY == 0:
            log.warning("%d seeks back to offset %d of %s have not brought it back; records keep arriving past it",
                        self.reseeks[tp], missing, tp)

    def _seek_back(self, tp: Hashable, missing: int, passed_to: int) -> bool:
        """Whether to seek tp back to `missing`; after MAX_SEEKS tries it is passed over up to passed_to (next =
        passed_to), but never past an offset the agent was handed and cut: such a message exists, and it comes
        only with a re-read, so the agent keeps seeking back for it (logged at each try)."""
        sought, tried = self.seeks.get(tp, (None, 0))
        if sought != missing:
            tried = 0
            self.reseeks.pop(tp, None)
        if tried >= MAX_SEEKS:
            handed = [max(first, missing) for first, end in self.handed.get(tp, ()) if end > missing]
            passed_to = min([passed_to, *handed])
            if passed_to <= missing:
                log.warning("offset %d of %s is still missing after %d seeks back; the records after it were handed "
                            "to the agent and left to the re-read, so it is sought back again", missing, tp, tried)
            else:  # really absent: pass over it
                log.warning("offsets %d-%d of %s are still missing after %d seeks back: taken as absent from the "
                            "topic (compaction or retention)", missing, passed_to - 1, tp, tried)
                self.seeks.pop(tp, None)
                self.reseeks.pop(tp, None)
                self._advance(tp, passed_to)
                return False
        self.seeks[tp] = (missing, tried + 1)
        self._advance(tp, missing)
        return True

    def _advance(self, tp: Hashable, offset: int) -> None:
        """The agent's next offset of tp is now `offset`: the cut offsets below it were served (or passed over)."""
        self.next[tp] = offset
        if tp in self.handed:
            self.handed[tp] = [(max(first, offset), end) for first, end in self.handed[tp] if end > offset]
            if not self.handed[tp]:
                del self.handed[tp]

    def truncated(self, tp: Hashable, log_start: int) -> list[tuple[int, int]]:
        """Retention deleted tp's offsets below log_start while the agent waited for one of them (a seek below the
        log start is reset there by the consumer, so the re-read would never bring it): the offsets from the
        expected one to log_start are passed over, returned as [(first, log_start)], and the agent seeks back
        to log_start instead. [] if the expected offset is not below log_start."""
        missing = self.next.get(tp)
        if missing is None or missing >= log_start:
            return []
        log.warning("offsets %d-%d of %s were deleted by retention before the agent read them: passed over",
                    missing, log_start - 1, tp)
        self.seeks[tp] = (log_start, 1)
        self.reseeks.pop(tp, None)
        self._advance(tp, log_start)
        return [(missing, log_start)]
