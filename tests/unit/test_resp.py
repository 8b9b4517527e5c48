"""The RESP2 encoder and reply parser of services.resp, without a server.

Replies arrive in arbitrary pieces: every test stream is fed whole, byte by byte, and split
at every boundary, and must give the same replies each way."""

from __future__ import annotations

from typing import Any

import pytest

from services.resp import Endpoint, Parser, RespError, RespProtocolError, pack, parse_url

NESTED = b"*3\r\n:1\r\n*2\r\n$3\r\nfoo\r\n$-1\r\n*2\r\n*0\r\n*1\r\n:-42\r\n"
NESTED_VALUE = [1, [b"foo", None], [[], [-42]]]


def _replies(value: Any) -> list[Any]:
    """Errors compared by their text (two RespErrors are never equal)."""
    if isinstance(value, RespError):
        return ["error", value.text]
    if isinstance(value, list):
        return [_replies(item) for item in value]
    return value  # type: ignore[no-any-return]


def feed_all(pieces: list[bytes]) -> list[Any]:
    parser = Parser()
    found: list[Any] = []
    for piece in pieces:
        found.extend(parser.feed(piece))
    return _replies(found)


def each_split(stream: bytes) -> list[list[bytes]]:
    """The stream whole, byte by byte, and cut once at every position."""
    splits = [[stream], [stream[i : i + 1] for i in range(len(stream))]]
    splits += [[stream[:cut], stream[cut:]] for cut in range(1, len(stream))]
    return splits


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"+OK\r\n", [b"OK"]),
        (b":0\r\n:-7\r\n:123456789012\r\n", [0, -7, 123456789012]),
        (b"$5\r\nhello\r\n$0\r\n\r\n", [b"hello", b""]),
        (b"$-1\r\n*-1\r\n", [None, None]),
        (b"$4\r\na\r\nb\r\n", [b"a\r\nb"]),  # CRLF inside a bulk string is data
        (NESTED, [NESTED_VALUE]),
        (
            b"-NOSCRIPT No matching script.\r\n:5\r\n",
            [["error", "NOSCRIPT No matching script."], 5],
        ),
        (b"*2\r\n-ERR inner\r\n+QUEUED\r\n", [[["error", "ERR inner"], b"QUEUED"]]),
    ],
)
def test_replies_split_at_every_byte_boundary(stream: bytes, expected: list[Any]) -> None:
    for pieces in each_split(stream):
        assert feed_all(pieces) == expected, pieces


def test_an_error_reply_carries_the_redis_text() -> None:
    (error,) = Parser().feed(b"-WRONGTYPE Operation against a key holding the wrong kind\r\n")
    assert isinstance(error, RespError)
    assert error.text.startswith("WRONGTYPE") and str(error) == error.text


def test_a_large_bulk_string_in_many_pieces() -> None:
    body = bytes(range(256)) * 4096  # 1 MiB, every byte value, CRLF pairs included
    stream = b"$%d\r\n%s\r\n:1\r\n" % (len(body), body)
    parser = Parser()
    found: list[Any] = []
    for start in range(0, len(stream), 1000):
        found.extend(parser.feed(stream[start : start + 1000]))
    assert found == [body, 1]
    # and the parser is ready for the next reply
    assert parser.feed(b"$2\r\nok\r\n") == [b"ok"]


def test_many_replies_in_one_piece_and_a_partial_tail() -> None:
    parser = Parser()
    assert parser.feed(b":1\r\n:2\r\n$3\r\nab") == [1, 2]
    assert parser.feed(b"c\r\n") == [b"abc"]


def test_a_reply_that_is_not_resp2_is_refused() -> None:
    with pytest.raises(RespProtocolError):
        Parser().feed(b"?what\r\n")


def test_commands_are_arrays_of_bulk_strings() -> None:
    assert pack([b"SET", "kë", 12, 1.5]) == (
        b"*4\r\n$3\r\nSET\r\n$3\r\nk\xc3\xab\r\n$2\r\n12\r\n$3\r\n1.5\r\n"
    )
    with pytest.raises(TypeError):
        pack([b"SET", True])


def test_urls_as_the_settings_accept_them() -> None:
    assert parse_url("redis://localhost:6379/0") == Endpoint()
    assert parse_url("redis://:p%40ss@10.0.0.5/3") == Endpoint(
        host="10.0.0.5", db=3, password="p@ss"
    )
    assert parse_url("rediss://csms:secret@redis.example:6380") == Endpoint(
        host="redis.example", port=6380, username="csms", password="secret", tls=True
    )
    assert parse_url("unix:///run/redis.sock?db=2") == Endpoint(path="/run/redis.sock", db=2)
    assert parse_url("redis://h?db=4").db == 4
    with pytest.raises(ValueError, match="redis://"):
        parse_url("http://localhost")
