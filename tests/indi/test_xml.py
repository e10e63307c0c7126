"""The sans-I/O INDI parser and writers: typed events, streaming BLOBs, limits, and garbage."""

from __future__ import annotations

import base64
import math
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from phdserver.cameras.indi._blob import Base64Stream
from phdserver.cameras.indi._xml import (
    DefVector,
    DelProperty,
    EnableBlob,
    GetProperties,
    IndiParser,
    IndiProtocolError,
    Message,
    NewVector,
    SetVector,
    enable_blob_xml,
    get_properties_xml,
    new_vector_xml,
    parse_number,
)

# Shaped like what indiserver 1.9.9 really sends (values on their own lines, see the module doc).
DEF_NUMBER = b"""<defNumberVector device="CCD Simulator" name="CCD_BINNING" label="Binning"
 group="Image Settings" state="Idle" perm="rw" timeout="60" timestamp="2026-11-21T23:52:17">
    <defNumber name="HOR_BIN" label="X" format="%2.0f" min="1" max="4" step="1">
1
    </defNumber>
    <defNumber name="VER_BIN" label="Y" format="%2.0f" min="1" max="4" step="1">
1
    </defNumber>
</defNumberVector>
"""
SET_SWITCH = b"""<setSwitchVector device="CCD Simulator" name="CCD_FRAME_TYPE" state="Ok">
    <oneSwitch name="FRAME_LIGHT">
Off
    </oneSwitch>
    <oneSwitch name="FRAME_DARK">
On
    </oneSwitch>
</setSwitchVector>
"""
PAYLOAD = bytes(range(256)) * 40


def blob_xml(payload: bytes = PAYLOAD, *, wrap: int | None = None) -> bytes:
    text = base64.b64encode(payload).decode()
    if wrap:
        text = "\n".join(text[i : i + wrap] for i in range(0, len(text), wrap))
    return (
        f'<setBLOBVector device="CCD Simulator" name="CCD1" state="Ok" timeout="60">'
        f'<oneBLOB name="CCD1" size="{len(payload)}" format=".fits" len="{len(payload)}">'
        f"{text}</oneBLOB></setBLOBVector>"
    ).encode()


STREAM = (
    DEF_NUMBER
    + SET_SWITCH
    + b'<message device="CCD Simulator" timestamp="x" message="[WARNING] no focal length"/>\n'
    + blob_xml()
    + b'<delProperty device="CCD Simulator"/>\n'
)


def feed_in_pieces(data: bytes, size: int, parser: IndiParser | None = None) -> list[object]:
    parser = parser or IndiParser()
    events: list[object] = []
    for i in range(0, len(data), size):
        events += parser.feed(data[i : i + size])
    return events


def test_events_are_typed() -> None:
    events = IndiParser().feed(STREAM)
    assert [type(e) for e in events] == [DefVector, SetVector, Message, SetVector, DelProperty]
    binning, frame_type, message, blob, gone = events
    assert isinstance(binning, DefVector)
    assert binning.kind == "Number"
    assert binning.perm == "rw"
    assert binning.group == "Image Settings"
    hor = binning.elements["HOR_BIN"]
    assert (hor.value, hor.min, hor.max, hor.format) == (1.0, 1.0, 4.0, "%2.0f")
    assert isinstance(frame_type, SetVector)
    assert frame_type.state == "Ok"
    assert frame_type.elements["FRAME_DARK"].value is True
    assert frame_type.elements["FRAME_LIGHT"].value is False
    assert isinstance(message, Message)
    assert message.message == "[WARNING] no focal length"
    assert isinstance(blob, SetVector)
    assert blob.kind == "BLOB"
    element = blob.elements["CCD1"]
    assert bytes(element.value) == PAYLOAD  # type: ignore[arg-type]
    assert (element.format, element.size) == (".fits", len(PAYLOAD))
    assert gone == DelProperty(device="CCD Simulator", name=None)


@pytest.mark.parametrize("size", [1, 7, 64, 1000, len(STREAM)])
def test_any_split_gives_the_same_events(size: int) -> None:
    assert feed_in_pieces(STREAM, size) == IndiParser().feed(STREAM)


def test_partial_element_waits_for_the_rest() -> None:
    parser = IndiParser()
    assert parser.feed(SET_SWITCH[:-20]) == []
    assert len(parser.feed(SET_SWITCH[-20:])) == 1


def test_wrapped_base64_is_accepted() -> None:
    (event,) = IndiParser().feed(blob_xml(wrap=72))
    assert isinstance(event, SetVector)
    assert bytes(event.elements["CCD1"].value) == PAYLOAD  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [1, 3, 10, 100])
def test_blob_text_with_entities_and_line_ends(size: int) -> None:
    # "QUJD" is "ABC"; an entity, a CR LF and a split anywhere must not change the bytes
    data = (
        b"<setBLOBVector device='d' name='b'><oneBLOB name='b' format='.fits'>"
        b"&#81;UJD\r\nQUJD QUJD&#x51;UJD\r</oneBLOB></setBLOBVector>"
    )
    (event,) = feed_in_pieces(data, size)
    assert isinstance(event, SetVector)
    assert bytes(event.elements["b"].value) == b"ABC" * 4  # type: ignore[arg-type]


def test_client_to_driver_messages() -> None:
    data = (
        get_properties_xml()
        + get_properties_xml("Dev", "PROP")
        + enable_blob_xml("Dev", "CCD1", "Also")
        + new_vector_xml("Switch", "Dev", "CONNECTION", {"CONNECT": True, "DISCONNECT": False})
        + new_vector_xml("Number", "Dev", "CCD_EXPOSURE", {"CCD_EXPOSURE_VALUE": 0.25})
        + new_vector_xml("Text", "Dev <&>", "NOTE", {"T": "a < b & \"c\""})
    )
    events = IndiParser().feed(data)
    assert events[0] == GetProperties(version="1.7")
    assert events[1] == GetProperties(device="Dev", name="PROP", version="1.7")
    assert events[2] == EnableBlob(device="Dev", name="CCD1", mode="Also")
    connect, expose, text = events[3:]
    assert isinstance(connect, NewVector)
    assert {k: e.value for k, e in connect.elements.items()} == {
        "CONNECT": True,
        "DISCONNECT": False,
    }
    assert isinstance(expose, NewVector)
    assert expose.elements["CCD_EXPOSURE_VALUE"].value == 0.25
    assert isinstance(text, NewVector)
    assert text.device == "Dev <&>"
    assert text.elements["T"].value == 'a < b & "c"'
    for chunk in data.split(b"\n")[:-1]:
        ET.fromstring(chunk)  # each message is well-formed XML on its own


def test_writers_refuse_bad_values() -> None:
    with pytest.raises(ValueError, match="enableBLOB"):
        enable_blob_xml("Dev", None, "Sometimes")
    with pytest.raises(ValueError, match="non-finite"):
        new_vector_xml("Number", "Dev", "N", {"V": math.nan})


@pytest.mark.parametrize(
    ("text", "value"),
    [("1.5", 1.5), ("  -3 \n", -3.0), ("12:30:00", 12.5), ("-0:30", -0.5), ("12 30 36", 12.51)],
)
def test_numbers_decimal_and_sexagesimal(text: str, value: float) -> None:
    assert parse_number(text) == pytest.approx(value)


def test_unparsable_number_is_nan() -> None:
    assert math.isnan(parse_number("twelve"))


def test_unknown_elements_are_skipped() -> None:
    events = IndiParser().feed(b"<pingRequest uid='1'/><newish><x><y/></x></newish>" + SET_SWITCH)
    assert [type(e) for e in events] == [SetVector]


@pytest.mark.parametrize(
    "garbage",
    [
        b"<setSwitchVector device='d' name='n'></oneSwitch>",  # mismatched tags
        b"</indi>",  # closing our synthetic root
        b"<?xml version='1.0'?>",  # a declaration mid-stream
        b"<setNumberVector name='n'/>",  # no device
        b"<defTextVector device='d'/>",  # no name
        b"<setBLOBVector device='d' name='b'><oneBLOB name='b'>@@@@</oneBLOB></setBLOBVector>",
        b"<setBLOBVector device='d' name='b'><oneBLOB name='b'>QUJD\xc3\xa9</oneBLOB>"
        b"</setBLOBVector>",
        b"\xff\xfe<bad",
    ],
)
def test_garbage_raises_protocol_error_and_stays_dead(garbage: bytes) -> None:
    parser = IndiParser()
    with pytest.raises(IndiProtocolError):
        parser.feed(garbage)
    with pytest.raises(IndiProtocolError):
        parser.feed(SET_SWITCH)


def test_huge_tag_is_refused_before_it_is_buffered() -> None:
    parser = IndiParser(max_pending=64 * 1024)
    parser.feed(b"<setSwitchVector device='")
    with pytest.raises(IndiProtocolError, match="without a complete XML token"):
        parser.feed(b"x" * 100 * 4096)


def test_huge_text_is_refused() -> None:
    parser = IndiParser(max_text=10_000)
    with pytest.raises(IndiProtocolError, match="element text"):
        parser.feed(b"<setTextVector device='d' name='n'><oneText name='t'>" + b"a" * 20_000)


def test_too_many_elements_are_refused() -> None:
    body = b"".join(b"<oneSwitch name='s%d'>On</oneSwitch>" % i for i in range(20))
    with pytest.raises(IndiProtocolError, match="elements"):
        IndiParser(max_elements=10).feed(
            b"<setSwitchVector device='d' name='n'>" + body + b"</setSwitchVector>"
        )


def test_blob_cap() -> None:
    with pytest.raises(IndiProtocolError, match="BLOB"):
        IndiParser(max_blob=1000).feed(blob_xml(bytes(5000)))


def test_big_blob_streams_without_one_giant_string() -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB
    data = blob_xml(payload)
    parser = IndiParser(max_pending=256 * 1024)  # a 2.7 MB base64 text must not count as pending
    (event,) = feed_in_pieces(data, 65536, parser)
    assert isinstance(event, SetVector)
    assert bytes(event.elements["CCD1"].value) == payload  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 4096])
def test_base64_stream_any_split(size: int) -> None:
    text = base64.b64encode(PAYLOAD + b"xy").decode()
    stream = Base64Stream(max_bytes=1 << 20)
    for i in range(0, len(text), size):
        stream.feed(text[i : i + size])
    assert bytes(stream.finish()) == PAYLOAD + b"xy"


def test_base64_stream_rejects_a_dangling_tail() -> None:
    stream = Base64Stream(max_bytes=100)
    stream.feed("QUJDRA")
    with pytest.raises(ValueError, match="stray"):
        stream.finish()


def _check_only_protocol_errors(chunks: list[bytes]) -> None:
    parser = IndiParser(max_pending=4096, max_text=4096, max_elements=64, max_blob=1 << 16)
    for chunk in chunks:
        try:
            parser.feed(chunk)
        except IndiProtocolError:
            return


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_random_bytes_only_raise_protocol_errors(chunks: list[bytes]) -> None:
    _check_only_protocol_errors(chunks)


_FRAGMENTS = [
    b"<", b">", b"/>", b"</", b"=", b"'", b'"', b" ", b"\n", b"&amp;", b"&bogus;", b"QUJD",
    b"defNumberVector", b"setBLOBVector", b"oneBLOB", b"defSwitch", b"oneNumber", b"message",
    b"delProperty", b"enableBLOB", b"getProperties", b"device='d'", b"name='n'", b"On", b"1e999",
    b"size='99999999999999999999999'", b"<![CDATA[", b"]]>", b"<!--", b"-->", b"\x00", b"\xc3",
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=60), st.integers(1, 50))
def test_xmlish_fragments_only_raise_protocol_errors(parts: list[bytes], size: int) -> None:
    data = b"".join(parts)
    _check_only_protocol_errors([data[i : i + size] for i in range(0, len(data), size)])


@settings(max_examples=100, deadline=None)
@given(st.integers(0, len(STREAM)))
def test_truncated_streams_parse_a_prefix(cut: int) -> None:
    events = IndiParser().feed(STREAM[:cut])
    assert events == IndiParser().feed(STREAM)[: len(events)]
