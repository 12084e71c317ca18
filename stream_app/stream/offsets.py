"""Re-read what Faust skipped: the offsets of a partition must reach the agent without a hole.

faust-streaming 0.15 can lose a message right after a partition is assigned (measured with two workers and a
SIGTERM: 2 of 480 events lost per takeover). Records fetched before the recovery's seek to the committed offsets
reach the stream after it; Faust then takes the offsets between its reset read position and such a record for a
gap in the topic (as compaction leaves one), acks them, and drops the re-fetched records as already read, so a
message that was in the stream's buffer when the seek cleared it is never delivered again.

The input topics are neither compacted nor transactional: every offset holds a message, so a hole in the offsets
an agent sees is a message Faust skipped. OffsetGuard keeps, per partition, the next offset the agent must see
(from the group's committed offset when the partition is assigned), and when a batch starts past it, or has a
hole, names the offset to seek back to: the skipped message comes again, and those after it are redeliveries
(the user-state table's event-id dedupe recognises them; items are re-indexed only if changed).

A partition with no committed offset (its previous owner died before its first commit) starts at the log start,
as `consumer_auto_offset_reset="earliest"` reads it. There Faust loses records another way (measured with two
workers and a SIGKILL, about 1 takeover in 10 under load): it drops records fetched while its flow is stopped and
seeks back to the committed offsets, but aiokafka's `seek_to_committed` leaves a partition without a committed
offset (or with 0) where it is, past the dropped records; the agent never sees them nor anything that would show a
hole. So idle() is also called periodically: a partition whose consumer position stays past the next offset its
agent must see while the agent takes nothing was fetched and never delivered, and is sought back too.

An offset that is still missing after MAX_SEEKS seeks back to it is taken as really absent (a topic an operator
made compacted, or a retention that deleted it while the group was away) and passed over, so a real gap never
makes the agent seek forever.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Hashable

log = logging.getLogger(__name__)
MAX_SEEKS = 3  # seeks back to one missing offset before it is taken as absent from the topic
IDLE_CHECK_S = 2.0  # how often idle() runs: records fetched and never delivered are re-read within ~2-3 of these


class OffsetGuard:
    """Per partition, the next offset the agent must see; check() (after each batch) and idle() (periodically,
    while the agent is idle) return the seeks that close holes."""

    def __init__(self) -> None:
        self.next: dict[Hashable, int] = {}
        self.seeks: dict[Hashable, tuple[int, int]] = {}  # partition -> (missing offset, seeks back to it so far)
        self.suspect: dict[Hashable, tuple[int, int]] = {}  # partition -> (expected, position) at the last idle()

    def assigned(self, partitions: Iterable[Hashable]) -> None:
        """The partitions are (re)assigned: their next offset comes from their start offset again."""
        for tp in partitions:
            self.next.pop(tp, None)
            self.seeks.pop(tp, None)
            self.suspect.pop(tp, None)

    def without_next(self, partitions: Iterable[Hashable]) -> list[Hashable]:
        """The partitions whose next offset is not known yet (none served since assigned): only their start
        offsets are needed by check() and idle()."""
        return [tp for tp in partitions if tp not in self.next]

    def check(self, offsets: Mapping[Hashable, Iterable[int]], starts: Mapping[Hashable, int | None]
              ) -> dict[Hashable, int]:
        """After a batch was served: offsets seen per partition; starts: the offset each partition's agent starts
        from once assigned (the group's committed offset, the next to read, or the log start where none is
        committed or retention removed it; None where unknown), needed only for partitions without_next().
        Returns partition -> the first offset never seen, for each partition with a hole. Offsets below the
        expected one are redeliveries and change nothing."""
        seeks: dict[Hashable, int] = {}
        for tp, seen in offsets.items():
            seen = sorted(set(seen))
            if not seen:
                continue
            self.suspect.pop(tp, None)
            expected = self.next.get(tp)
            known = expected is not None
            if expected is None:
                start = starts.get(tp)
                known = start is not None  # unknown (the broker did not say): only holes inside the batch count
                expected = start if start is not None and start <= seen[0] else seen[0]
            ahead = [o for o in seen if o >= expected]
            if ahead and ahead[0] > expected:
                missing: int | None = expected
            else:
                missing = next((a + 1 for a, b in zip(ahead, ahead[1:]) if b > a + 1), None)
            if missing is None:
                self.seeks.pop(tp, None)
                if known:  # else the next batch decides again, once the start is known
                    self.next[tp] = max(expected, ahead[-1] + 1) if ahead else expected
            elif self._seek_back(tp, missing, passed_to=ahead[-1] + 1):
                seeks[tp] = missing
        return seeks

    def idle(self, positions: Mapping[Hashable, int | None], starts: Mapping[Hashable, int | None]
             ) -> dict[Hashable, int]:
        """Periodically: the consumer's position (the next offset it hands over) of each partition whose agent has
        taken no batch since the previous call and has none in hand. A position past the next offset the agent
        must see, the same at two calls in a row, means records were handed over and never delivered (had they
        been in the stream's buffer, the idle agent would have taken them): returns partition -> that offset, to
        seek back to. A partition missing from positions (its agent was busy) starts over."""
        seeks: dict[Hashable, int] = {}
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
        return seeks

    def _seek_back(self, tp: Hashable, missing: int, passed_to: int) -> bool:
        """Whether to seek tp back to `missing`; after MAX_SEEKS tries it is passed over (next = passed_to)."""
        sought, tried = self.seeks.get(tp, (None, 0))
        tried = tried if sought == missing else 0
        if tried >= MAX_SEEKS:  # really absent: pass over it
            log.warning("offset %d of %s is still missing after %d seeks back: taken as absent from the topic "
                        "(compaction or retention)", missing, tp, tried)
            self.seeks.pop(tp, None)
            self.next[tp] = passed_to
            return False
        self.seeks[tp] = (missing, tried + 1)
        self.next[tp] = missing
        return True
