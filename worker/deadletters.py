"""Build dead letters: the original key and value unchanged, the reason in headers."""

from __future__ import annotations

from dataclasses import dataclass

from worker.messages import SourceMessage

__all__ = ["DeadLetter", "build_dead_letter"]


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def build_dead_letter(message: SourceMessage, reason: str, detail: str) -> DeadLetter:
    """A dead letter for ``message``.

    >>> from worker.messages import Message
    >>> dl = build_dead_letter(Message("in", 1, 7, 0, b"k", b"oops"), "invalid_json", "x")
    >>> dl.value, dict(dl.headers)["error.reason"], dict(dl.headers)["source.offset"]
    (b'oops', b'invalid_json', b'7')
    """
    headers = [
        ("error.reason", reason.encode()),
        ("error.detail", detail.encode("utf-8", "replace")[:1000]),
        ("source.topic", message.topic.encode()),
        ("source.partition", str(message.partition).encode()),
        ("source.offset", str(message.offset).encode()),
    ]
    return DeadLetter(message.key, message.value, headers)
