"""Build dead letters: the original key and value, the reason in headers, always deliverable.

A dead letter carries the original bytes unchanged when they fit ``max_bytes``
(the largest output the producer may send, less room for the batch framing).
When they do not (an ``oversized`` record larger than the producer's request
limit), it carries a prefix of the value (and of the key, if the key alone is
too large) with headers saying so and giving the original sizes, so the dead
letter can always be produced and the worker never stops on it.

A *skipped* range (a record batch the Kafka client itself could not decode) has
no record to carry: its dead letter is headers only, naming the offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.contract.messages import SourceMessage

__all__ = ["DETAIL_MAX_BYTES", "DeadLetter", "build_dead_letter", "build_skipped_letter"]

#: The ``error.detail`` header is cut to this many bytes.
DETAIL_MAX_BYTES = 1000


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def size(self) -> int:
        """Bytes of key, value and headers (what the producer's size limit counts, roughly)."""
        return len(self.key or b"") + len(self.value or b"") + _headers_size(self.headers)


def build_dead_letter(
    message: SourceMessage, reason: str, detail: str, max_bytes: int | None = None
) -> DeadLetter:
    """A dead letter for ``message``; cut to ``max_bytes`` (key + value + headers) if given.

    >>> from worker.contract.messages import Message
    >>> dl = build_dead_letter(Message("in", 1, 7, 0, b"k", b"oops"), "invalid_json", "x")
    >>> dl.value, dict(dl.headers)["error.reason"], dict(dl.headers)["source.offset"]
    (b'oops', b'invalid_json', b'7')
    >>> cut = build_dead_letter(Message("in", 1, 7, 0, b"k", b"x" * 5000), "oversized", "", 2000)
    >>> headers = dict(cut.headers)
    >>> cut.size <= 2000, headers["error.truncated"], headers["source.value.size"]
    (True, b'value', b'5000')
    """
    headers = _headers(reason, detail, message.topic, message.partition, message.offset)
    letter = DeadLetter(message.key, message.value, headers)
    if max_bytes is None or letter.size <= max_bytes:
        return letter
    return _truncated(message, headers, max_bytes)


def _truncated(
    message: SourceMessage, headers: list[tuple[str, bytes]], max_bytes: int
) -> DeadLetter:
    key, value = message.key, message.value
    key_size, value_size = len(key or b""), len(value or b"")
    cut = ["value"]
    headers = [
        *headers,
        ("source.value.size", str(value_size).encode()),
        ("source.key.size", str(key_size).encode()),
    ]
    room = max_bytes - _headers_size(headers) - len(b"error.truncatedkey,value")
    if key is not None and key_size > room // 2:
        key = key[: room // 2]
        cut.insert(0, "key")
    if value is not None:
        value = value[: max(room - len(key or b""), 0)]
    headers.append(("error.truncated", ",".join(cut).encode()))
    return DeadLetter(key, value, headers)


def build_skipped_letter(
    topic: str, partition: int, first_offset: int, last_offset: int, reason: str, detail: str
) -> DeadLetter:
    """A headers-only dead letter for offsets skipped because their batch could not be read.

    >>> h = dict(build_skipped_letter("in", 2, 10, 14, "corrupt_batch", "crc").headers)
    >>> h["source.offset"], h["source.offset.last"], h["error.reason"]
    (b'10', b'14', b'corrupt_batch')
    """
    headers = _headers(reason, detail, topic, partition, first_offset)
    headers.append(("source.offset.last", str(last_offset).encode()))
    return DeadLetter(None, None, headers)


def _headers(
    reason: str, detail: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    return [
        ("error.reason", reason.encode()),
        ("error.detail", detail.encode("utf-8", "replace")[:DETAIL_MAX_BYTES]),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(offset).encode()),
    ]


def _headers_size(headers: list[tuple[str, bytes]]) -> int:
    return sum(len(k) + len(v) for k, v in headers)
