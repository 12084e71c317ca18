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


class OffsetGuard:
    """Per partition, the next offset the agent must see; check() returns the seeks that close holes."""

    def __init__(self) -> None:
        self.next: dict[Hashable, int] = {}
        self.seeks: dict[Hashable, tuple[int, int]] = {}  # partition -> (missing offset, seeks back to it so far)

    def assigned(self, partitions: Iterable[Hashable]) -> None:
        """The partitions are (re)assigned: their next offset comes from the committed offset again."""
        for tp in partitions:
            self.next.pop(tp, None)
            self.seeks.pop(tp, None)

    def check(self, offsets: Mapping[Hashable, Iterable[int]], committed: Mapping[Hashable, int | None]
              ) -> dict[Hashable, int]:
        """After a batch was served: offsets seen per partition; committed: the group's committed offset (the next
        to read) of each partition as the consumer last knew it. Returns partition -> the first offset never
        seen, for each partition with a hole. Offsets below the expected one are redeliveries and change nothing."""
        seeks: dict[Hashable, int] = {}
        for tp, seen in offsets.items():
            seen = sorted(set(seen))
            expected = self.next.get(tp)
            if expected is None:
                start = committed.get(tp)
                expected = start if start is not None and start <= seen[0] else seen[0]
            ahead = [o for o in seen if o >= expected]
            if ahead and ahead[0] > expected:
                missing: int | None = expected
            else:
                missing = next((a + 1 for a, b in zip(ahead, ahead[1:]) if b > a + 1), None)
            sought, tried = self.seeks.get(tp, (None, 0))
            tried = tried if sought == missing else 0
            if missing is not None and tried >= MAX_SEEKS:  # really absent: pass over it
                log.warning("offset %d of %s is still missing after %d seeks back: taken as absent from the topic "
                            "(compaction or retention)", missing, tp, tried)
                self.seeks.pop(tp, None)
                self.next[tp] = ahead[-1] + 1
            elif missing is not None:
                seeks[tp] = missing
                self.seeks[tp] = (missing, tried + 1)
                self.next[tp] = missing
            else:
                self.seeks.pop(tp, None)
                self.next[tp] = max(expected, ahead[-1] + 1) if ahead else expected
        return seeks
