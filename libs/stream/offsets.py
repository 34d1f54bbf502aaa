"""What may be committed: per partition, the end of the longest prefix of finished work.

Work is tracked in spans of consecutive offsets (one message, or one batch), in the order the
messages were read, which per partition is offset order. Spans finish in any order; the watermark of a
partition moves past a span only once it and every span before it finished, so a commit never covers
a message whose work is not done (arroyo's CommitOffsets gets the same from its strategies' order).
"""

from __future__ import annotations

import collections


class Span:
    """Offsets `first`..`last` of one partition, handled as one unit of work."""

    __slots__ = ("done", "first", "last", "partition")

    def __init__(self, partition: int, first: int) -> None:
        self.partition = partition
        self.first = first
        self.last = first
        self.done = False


class Watermarks:
    def __init__(self) -> None:
        self._spans: dict[int, collections.deque[Span]] = {}
        self._done_upto: dict[int, int] = {}  # partition -> next offset after the finished prefix
        self._committed: dict[int, int] = {}

    def open(self, partition: int, offset: int) -> Span:
        """A new span starting at `offset` (extend it with `extend`)."""
        span = Span(partition, offset)
        self._spans.setdefault(partition, collections.deque()).append(span)
        return span

    @staticmethod
    def extend(span: Span, offset: int) -> None:
        span.last = offset

    def finish(self, span: Span) -> None:
        """The span's work is done. A span of a partition forgotten since (revoked) changes nothing."""
        span.done = True
        spans = self._spans.get(span.partition)
        while spans and spans[0].done:
            self._done_upto[span.partition] = spans.popleft().last + 1

    def committable(self, partitions: set[int] | None = None) -> dict[int, int]:
        """Partition -> offset to commit, where it moved since the last `committed`."""
        return {
            p: off for p, off in self._done_upto.items()
            if (partitions is None or p in partitions) and self._committed.get(p) != off
        }

    def committed(self, offsets: dict[int, int]) -> None:
        self._committed.update(offsets)

    def first_pending(self, partition: int) -> int | None:
        """The first offset of `partition` whose work is not finished, if any was read."""
        spans = self._spans.get(partition)
        return spans[0].first if spans else None

    def done_upto(self, partition: int, default: int) -> int:
        """The next offset after the finished prefix (`default` when nothing was finished)."""
        return self._done_upto.get(partition, default)

    def forget(self, partitions: set[int]) -> None:
        """The partitions went to another member: their unfinished spans never count again."""
        for p in partitions:
            for span in self._spans.pop(p, ()):
                span.done = True
            self._done_upto.pop(p, None)
            self._committed.pop(p, None)
