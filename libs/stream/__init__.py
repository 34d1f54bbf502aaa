"""The stream layer: one consumer skeleton (consumer.py, strategies.py, offsets.py), one dead-letter
shape with the bad-ratio stop (deadletter.py, badness.py), and the one module allowed to touch
aiokafka's internals (produce.py)."""

from libs.stream.badness import BadMessages
from libs.stream.consumer import ConsumerSpec, Strategy, StreamConsumer
from libs.stream.deadletter import DeadLetters, TooManyBadMessages, dead_letter_record, message_context
from libs.stream.offsets import Span, Watermarks
from libs.stream.strategies import Apply, Batches, Concurrent

__all__ = [
    "Apply", "BadMessages", "Batches", "Concurrent", "ConsumerSpec", "DeadLetters", "Span", "Strategy",
    "StreamConsumer", "TooManyBadMessages", "Watermarks", "dead_letter_record", "message_context",
]
