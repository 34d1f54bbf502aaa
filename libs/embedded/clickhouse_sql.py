"""Where a ClickHouse HTTP request's statement ends and its data begins.

The HTTP interface reads one buffer: the `query` URL parameter (plus a newline) followed by the request
body. An INSERT with `FORMAT <name>` (or `VALUES`) carries its rows right after the statement, in that
format, which may be binary (Native): the statement is text, the rest is bytes for the engine's input
parser. This module scans the statement's text (quotes, backquotes, comments and parentheses respected)
to find that boundary, as ClickHouse's ParserInsertQuery does: the data starts after the first newline
that follows the format name, else after the whitespace that follows it.

Nothing here interprets SQL beyond that: the engine parses every statement itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

_WORD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_WORD = _WORD_START | frozenset(b"0123456789")
_SPACE = frozenset(b" \t\r\n\f\v")


class StatementError(ValueError):
    """The request's SQL cannot be run as one statement (ClickHouse's SYNTAX_ERROR)."""


@dataclass(frozen=True)
class Statement:
    """`sql`: the statement without its data (and, for an INSERT with data, without `FORMAT x`; an INSERT ...
    VALUES is kept whole, rows included).
    `kind`: its first keyword, upper-cased (SELECT, INSERT, SET, USE, ...). `insert_format`: the input
    format of `data` when the statement is an INSERT that carries rows. `output_format`: a FORMAT clause
    of any other statement (the output format it asks for), else None."""

    sql: str
    kind: str
    insert_format: str | None = None
    data: bytes = b""
    output_format: str | None = None


def split_statement(buffer: bytes) -> Statement:
    """The statement in `buffer` and, for an INSERT with rows, the rows. Raises StatementError for an
    empty request or more than one statement (ClickHouse's HTTP interface runs exactly one)."""
    pos, end = 0, len(buffer)
    words: list[tuple[str, int, int]] = []  # (upper-cased word, start, end) at parenthesis depth 0
    depth = 0
    kind = ""
    while pos < end:
        char = buffer[pos]
        if char in _SPACE:
            pos += 1
        elif buffer.startswith(b"--", pos) or (char == ord("#") and buffer.startswith(b"#!", pos)):
            newline = buffer.find(b"\n", pos)
            pos = end if newline < 0 else newline + 1
        elif buffer.startswith(b"/*", pos):
            close = buffer.find(b"*/", pos + 2)
            pos = end if close < 0 else close + 2
        elif char in b"'\"`":
            pos = _skip_quoted(buffer, pos)
        elif char in _WORD_START:
            start = pos
            while pos < end and buffer[pos] in _WORD:
                pos += 1
            word = buffer[start:pos].decode("ascii").upper()
            if not kind:
                kind = word
            if depth == 0:
                words.append((word, start, pos))
                if kind == "INSERT":
                    found = _insert_data(buffer, words)
                    if found is not None:
                        return found
        elif char == ord("("):
            depth += 1
            pos += 1
        elif char == ord(")"):
            depth = max(0, depth - 1)
            pos += 1
        elif char == ord(";"):
            if _has_content(buffer, pos + 1):
                raise StatementError("Multi-statements are not allowed")
            end = pos  # the statement ends at its semicolon; only whitespace or comments follow
        else:
            pos += 1
    sql = _text(buffer[:end]).strip()
    if not kind:  # nothing but whitespace, comments and punctuation
        raise StatementError("Empty query")
    return Statement(sql=sql, kind=kind, output_format=_format_clause(buffer, words))


def _insert_data(buffer: bytes, words: list[tuple[str, int, int]]) -> Statement | None:
    """For an INSERT whose last top-level word starts its data (the name after FORMAT, or VALUES): the
    statement head, the input format and the data. None while the statement goes on (or is an INSERT
    ... SELECT, which carries no data)."""
    if any(word in ("SELECT", "WITH") for word, _, _ in words[1:]):
        return None
    word, start, stop = words[-1]
    if word == "VALUES" and (len(words) < 2 or words[-2][0] != "FORMAT"):
        # Text, run whole by the engine's query path, where `{name:Type}` in the values are bound.
        return Statement(sql=_text(buffer).strip(), kind="INSERT")
    if len(words) >= 2 and _names_format(buffer, words[-2], words[-1]):
        name = _text(buffer[start:stop])
        data_start = stop
        while data_start < len(buffer) and buffer[data_start] in _SPACE:
            data_start += 1
            if buffer[data_start - 1] == ord("\n"):
                break
        return Statement(
            sql=_text(buffer[: words[-2][1]]).strip(), kind="INSERT", insert_format=name, data=buffer[data_start:]
        )
    return None


def _format_clause(buffer: bytes, words: list[tuple[str, int, int]]) -> str | None:
    for keyword, name in pairwise(words):
        if _names_format(buffer, keyword, name):
            return _text(buffer[name[1] : name[2]])
    return None


def _names_format(buffer: bytes, keyword: tuple[str, int, int], name: tuple[str, int, int]) -> bool:
    """`FORMAT <name>` (not the function `format(...)`): only whitespace between the two words."""
    return keyword[0] == "FORMAT" and not buffer[keyword[2] : name[1]].strip()


def _skip_quoted(buffer: bytes, pos: int) -> int:
    quote = buffer[pos]
    pos += 1
    while pos < len(buffer):
        char = buffer[pos]
        if char == ord("\\"):
            pos += 2
        elif char == quote:
            if pos + 1 < len(buffer) and buffer[pos + 1] == quote:  # a doubled quote stands for itself
                pos += 2
            else:
                return pos + 1
        else:
            pos += 1
    return pos


def _has_content(buffer: bytes, pos: int) -> bool:
    """Anything but whitespace and comments from `pos` on."""
    while pos < len(buffer):
        if buffer[pos] in _SPACE or buffer[pos] == ord(";"):
            pos += 1
        elif buffer.startswith(b"--", pos):
            newline = buffer.find(b"\n", pos)
            pos = len(buffer) if newline < 0 else newline + 1
        elif buffer.startswith(b"/*", pos):
            close = buffer.find(b"*/", pos + 2)
            pos = len(buffer) if close < 0 else close + 2
        else:
            return True
    return False


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise StatementError(f"the query is not valid UTF-8 (byte {exc.start})") from None
