"""events/sse.py: the exact bytes of frames and comments, and what clients make of them.

Clients are httpx-sse's decoder (the one the test client and load tools use) and a
plain reading of the WHATWG event-stream algorithm, written out below.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder

from events.sse import KEEPALIVE, comment, frame

# (case id, event type, data, cursor, exact frame)
FRAMES = [
    ("json", "chatdata", '{"type":"delta","item":{"text":"hi"}}', "1700000000000-0", 'id: 1700000000000-0\nevent: chatdata\ndata: {"type":"delta","item":{"text":"hi"}}\n\n'),
    ("no id", "complete", '{"workflowId":"w1"}', None, 'event: complete\ndata: {"workflowId":"w1"}\n\n'),
    ("synthetic id", "chatdata", "{}", "0-3", "id: 0-3\nevent: chatdata\ndata: {}\n\n"),
    ("LF", "e", "one\ntwo", "5-1", "id: 5-1\nevent: e\ndata: one\ndata: two\n\n"),
    ("CRLF", "e", "one\r\ntwo", None, "event: e\ndata: one\ndata: two\n\n"),
    ("CR", "e", "one\rtwo", None, "event: e\ndata: one\ndata: two\n\n"),
    ("mixed breaks", "e", "a\r\n\r\nb\rc\nd", None, "event: e\ndata: a\ndata: \ndata: b\ndata: c\ndata: d\n\n"),
    ("CR LF is one break, LF CR two", "e", "a\r\nb\n\rc", None, "event: e\ndata: a\ndata: b\ndata: \ndata: c\n\n"),
    ("leading break", "e", "\nx", None, "event: e\ndata: \ndata: x\n\n"),
    ("trailing break", "e", "x\n", None, "event: e\ndata: x\ndata: \n\n"),
    ("only a break", "e", "\r\n", None, "event: e\ndata: \ndata: \n\n"),
    ("empty", "e", "", None, "event: e\ndata: \n\n"),
    ("empty with id", "e", "", "9-9", "id: 9-9\nevent: e\ndata: \n\n"),
    ("leading spaces kept", "e", "  two spaces", None, "event: e\ndata:   two spaces\n\n"),
    ("colons", "e", "data: x: y", None, "event: e\ndata: data: x: y\n\n"),
    ("unicode", "chatdata", "héllo wörld, 你好, 🌍 — ok", "7-0", "id: 7-0\nevent: chatdata\ndata: héllo wörld, 你好, 🌍 — ok\n\n"),
    # Python's str.splitlines() splits at these; SSE does not, nor may frame().
    ("not SSE line breaks", "e", "a\u2028b\u2029c\x85d\x0be\x0cf\x1cg", None, "event: e\ndata: a\u2028b\u2029c\x85d\x0be\x0cf\x1cg\n\n"),
]


@pytest.mark.parametrize("event_type, data, cursor, expected", [c[1:] for c in FRAMES], ids=[c[0] for c in FRAMES])
def test_frame(event_type, data, cursor, expected):
    assert frame(event_type, data, cursor) == expected


@pytest.mark.parametrize(
    "event_type, cursor",
    [
        ("chat\ndata", "1-0"),
        ("chat\r", "1-0"),
        ("\r\nchat", None),
        ("chatdata", "1-0\n"),
        ("chatdata", "1\r-0"),
        ("chatdata", "\r\n"),
    ],
    ids=["LF in type", "CR in type", "CRLF in type", "LF in id", "CR in id", "CRLF id"],
)
def test_frame_rejects_line_breaks_in_type_and_id(event_type, cursor):
    with pytest.raises(ValueError):
        frame(event_type, "{}", cursor)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("keepalive", ": keepalive\n"),
        ("", ": \n"),
        ("a\nb", ": a\n: b\n"),
        ("a\r\nb\rc", ": a\n: b\n: c\n"),
        ("ünï 🌍", ": ünï 🌍\n"),
    ],
)
def test_comment(text, expected):
    assert comment(text) == expected


def test_keepalive_is_one_comment_line_without_a_blank_line():
    assert KEEPALIVE == ": keepalive\n"


# what clients decode


@dataclass
class Decoded:
    event: str
    data: str
    id: str


def whatwg_parse(stream: str) -> list[Decoded]:
    """https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation"""
    events: list[Decoded] = []
    event_type, data, last_id = "", "", ""
    lines = re.split(r"\r\n|\r|\n", stream)
    for line in lines[:-1]:  # the last piece is an unterminated line, discarded at the end of the stream
        if line == "":
            if data == "":
                event_type = ""
                continue
            events.append(Decoded(event_type or "message", data[:-1] if data.endswith("\n") else data, last_id))
            event_type, data = "", ""
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            event_type = value
        elif name == "data":
            data += value + "\n"
        elif name == "id" and "\0" not in value:
            last_id = value
    return events


def httpx_sse_parse(stream: str, chunk: int = 0) -> list[Decoded]:
    """httpx-sse as it reads a response: text in chunks, lines, then events."""
    lines, events = SSELineDecoder(), SSEDecoder()
    pieces = [stream[i : i + chunk] for i in range(0, len(stream), chunk)] if chunk else [stream]
    out = []
    for line in [line for piece in pieces for line in lines.decode(piece)] + lines.flush():
        if (sse := events.decode(line)) is not None:
            out.append(Decoded(sse.event, sse.data, sse.id))
    return out


PARSERS = {
    "whatwg": whatwg_parse,
    "httpx-sse": httpx_sse_parse,
    "httpx-sse, 1-char chunks": lambda stream: httpx_sse_parse(stream, chunk=1),
    "httpx-sse, 7-char chunks": lambda stream: httpx_sse_parse(stream, chunk=7),
}


def normalized(data: str) -> str:
    """What any SSE client can get back: line breaks arrive as LF."""
    return re.sub(r"\r\n|\r", "\n", data)


@pytest.mark.parametrize("parse", PARSERS.values(), ids=PARSERS.keys())
@pytest.mark.parametrize("event_type, data, cursor", [c[1:4] for c in FRAMES], ids=[c[0] for c in FRAMES])
def test_a_client_reconstructs_data_type_and_id(parse, event_type, data, cursor):
    [decoded] = parse(frame(event_type, data, cursor))
    assert decoded.data == normalized(data)
    assert decoded.event == event_type
    assert decoded.id == (cursor or "")


@pytest.mark.parametrize("parse", PARSERS.values(), ids=PARSERS.keys())
def test_a_stream_of_frames_and_keepalives_round_trips(parse):
    payloads = [
        ("chatdata", {"type": "message", "item": {"content": "line one\nline two\r\n", "role": "user"}}, "1700000000000-0"),
        ("chatdata", {"type": "delta", "item": {"text": "ünï\u2028cødé 🌍", "index": 0}}, "1700000000000-1"),
        ("complete", {"workflowId": "w1"}, "1700000000001-0"),
    ]
    stream = KEEPALIVE + "".join(frame(t, json.dumps(d, ensure_ascii=False), c) + KEEPALIVE + KEEPALIVE for t, d, c in payloads)
    decoded = parse(stream)
    assert [(e.event, json.loads(e.data), e.id) for e in decoded] == payloads


@pytest.mark.parametrize("parse", PARSERS.values(), ids=PARSERS.keys())
def test_keepalives_alone_make_no_event(parse):
    assert parse(KEEPALIVE * 3 + comment("a\nb")) == []


@pytest.mark.parametrize("parse", PARSERS.values(), ids=PARSERS.keys())
def test_multi_line_data_round_trips(parse):
    data = "first\nsecond\r\nthird\rfourth\n\nsixth after an empty line"
    [decoded] = parse(frame("e", data, "3-4"))
    assert decoded.data.split("\n") == ["first", "second", "third", "fourth", "", "sixth after an empty line"]
    assert decoded.id == "3-4"
