"""The sans-I/O protocol core: commands, timeouts, reply parsing and framing, state bits."""

from __future__ import annotations

import pytest

from phdserver.cameras.controller._protocol import (
    MAX_REPLY_BYTES,
    STATE_NAMES,
    Command,
    LineFramer,
    ReplyFramer,
    ReplyKind,
    bit_string,
    clear_command,
    done_reply,
    error_reply,
    expose_command,
    expose_timeout_s,
    header_command,
    parse_command,
    parse_reply,
    simple_command,
    status_command,
)

LS4_STATUS = (
    "{'ready': True, 'state': 'started', 'error': False, 'comment': 'started', "
    "'date': '2025-06-24T20:15:56.00', 'NOSTATUS': '0000', 'UNKNOWN': '0000', 'IDLE': '1111', "
    "'EXPOSING': '0000', 'READOUT_PENDING': '0000', 'READING': '0000', 'FETCHING': '0000', "
    "'FLUSHING': '0000', 'ERASING': '0000', 'PURGING': '0000', 'AUTOCLEAR': '0000', "
    "'AUTOFLUSH': '0000', 'POWERON': '1111', 'POWEROFF': '0000', 'POWERBAD': '0000', "
    "'FETCH_PENDING': '0000', 'ERROR': '0000', 'ACTIVE': '0000', 'ERRORED': '0000', "
    "'cmd_error': False, 'cmd_error_msg': 'False', 'cmd_reply': ''}"
)


def test_commands_are_the_reference_forms() -> None:
    assert status_command().wire() == b"status\n"
    assert expose_command(shutter_open=False, exposure_s=15, fileroot="20261121213000d").text == (
        "expose False    15.000 20261121213000d single")
    assert expose_command(shutter_open=True, exposure_s=0.5, fileroot="x", mode="first").text == (
        "expose True     0.500 x first")
    assert clear_command().text == "clear 20"
    assert header_command("IMAGETYP", "dark").text == "header IMAGETYP dark"
    assert header_command("EXPTIME", 1.5).text == "header EXPTIME 1.5"
    assert header_command("SIMPLE", True).text == "header SIMPLE T"
    assert simple_command("close_shutter").text == "close_shutter"


@pytest.mark.parametrize("key", ["imagetyp", "TOOLONGKEY", "", "A B"])
def test_header_keywords_must_be_fits_keywords(key: str) -> None:
    with pytest.raises(ValueError, match="FITS keyword"):
        header_command(key, "x")


@pytest.mark.parametrize("value", ["", "a\nb", "x" * 69, "caf\u00e9"])
def test_header_values_must_fit_a_card(value: str) -> None:
    with pytest.raises(ValueError, match="printable"):
        header_command("OBSERVER", value)


def test_commands_refuse_what_would_break_the_line() -> None:
    with pytest.raises(ValueError, match="printable ASCII"):
        Command(verb="x", text="status\nexpose")
    with pytest.raises(ValueError, match="fileroot"):
        expose_command(shutter_open=False, exposure_s=1, fileroot="a b")
    with pytest.raises(ValueError, match="mode must be one of"):
        expose_command(shutter_open=False, exposure_s=1, fileroot="x", mode="burst")
    with pytest.raises(ValueError, match="unknown command"):
        simple_command("format_disk")


def test_expose_timeouts_follow_ls4_and_take_the_larger_for_next() -> None:
    assert expose_timeout_s("single", 15) == 15 + 40 + 10 + 5
    assert expose_timeout_s("first", 15) == 15 + 40 + 5
    assert expose_timeout_s("next", 15) == 15 + 40 + 5
    assert expose_timeout_s("next", 0, readout_s=2, transfer_s=10) == 10 + 5
    assert expose_timeout_s("last", 15) == 10 + 5


def test_a_status_dict_with_an_error_state_key_is_done() -> None:
    """Every status has 'ERROR': '0000'; the reply is still a success (LS4's bug)."""
    reply = parse_reply(f"[DONE {LS4_STATUS}]".encode())
    assert reply.kind is ReplyKind.DONE
    status = reply.status
    assert status is not None
    assert status.ready
    assert not status.error
    assert not status.cmd_error
    assert status.bit("IDLE") == 15
    assert status.bit("POWERON") == 15
    assert not status.exposing
    assert not status.reading_out
    assert set(status.bits) == set(STATE_NAMES)
    assert status.state == "started"
    assert status.width is None


@pytest.mark.parametrize(
    ("data", "kind", "detail"),
    [
        (b"[ERROR exposure failed]", ReplyKind.ERROR, "exposure failed"),
        (b"[ERROR]", ReplyKind.ERROR, "no reason given"),
        (b"[BUSY 3]", ReplyKind.ERROR, "instead of DONE"),
        (b"[ERROR {'cmd_error': True, 'cmd_error_msg': 'shutter jammed'}]", ReplyKind.ERROR,
         "shutter jammed"),
        (b"[ERROR {'broken': ]", ReplyKind.ERROR, "{'broken':"),
        (b"[DONE {'cmd_error': True, 'cmd_error_msg': 'busy'}]", ReplyKind.CMD_ERROR, "busy"),
        (b"[DONE {'cmd_error': 'True', 'comment': 'no disk'}]", ReplyKind.CMD_ERROR, "no disk"),
        (b"[DONE {'ready': Tru}]", ReplyKind.MALFORMED, "not a Python literal"),
        (b"[DONE {'EXPOSING': 'on'}]", ReplyKind.MALFORMED, "not a bit string"),
        (b"[DONE {'ready': 'maybe'}]", ReplyKind.MALFORMED, "not a boolean"),
        (b"[DONE {'width': -3}]", ReplyKind.MALFORMED, "not a sensor size"),
        (b"[DONE {1: 2}]", ReplyKind.MALFORMED, "not strings"),
        (b"[DONE {'a': 1]", ReplyKind.MALFORMED, "not a Python literal"),
        (b"DONE {}", ReplyKind.MALFORMED, "not a bracketed"),
        (b"[DONE {'ready': True}", ReplyKind.MALFORMED, "no closing bracket"),
        (b"", ReplyKind.MALFORMED, "empty"),
        (b"[DONE]", ReplyKind.DONE, ""),
        (b"[DONE 15.000]", ReplyKind.DONE, "15.000"),
        (b"[DONE {}]\x00garbage", ReplyKind.DONE, ""),
    ],
)
def test_reply_classification(data: bytes, kind: ReplyKind, detail: str) -> None:
    reply = parse_reply(data)
    assert reply.kind is kind
    assert detail in reply.detail


def test_a_reply_cut_by_the_connection_is_dropped() -> None:
    cut = parse_reply(b"[DONE {'ready': Tr", eof=True)
    assert cut.kind is ReplyKind.DROPPED
    assert "cut off after 18 bytes" in cut.detail
    nothing = parse_reply(b"", eof=True)
    assert nothing.kind is ReplyKind.DROPPED
    assert "without a reply" in nothing.detail
    assert parse_reply(b"[DONE {}]", eof=True).kind is ReplyKind.DONE


def test_code_in_the_payload_is_never_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "ran"
    for payload in (f"__import__('os').mkdir({str(marker)!r})",
                    f"{{'a': __import__('os').mkdir({str(marker)!r})}}"):
        reply = parse_reply(f"[DONE {payload}]".encode())
        assert reply.kind in (ReplyKind.DONE, ReplyKind.MALFORMED)
        assert reply.status is None
    assert not marker.exists()


def test_framer_completes_on_the_balanced_bracket_however_it_is_chunked() -> None:
    reply = b"[DONE {'list': [1, 2], 'text': 'a ] inside', 'ready': True}]"
    for size in (1, 2, 7, len(reply)):
        framer = ReplyFramer()
        results = [framer.feed(reply[i : i + size]) for i in range(0, len(reply), size)]
        assert all(r is None for r in results[:-1]), size
        final = results[-1]
        assert final is not None
        assert final.kind is ReplyKind.DONE
        assert final.status is not None
        assert final.status.fields["list"] == [1, 2]


def test_framer_ends_at_nul_eof_or_the_size_cap() -> None:
    framer = ReplyFramer()
    assert framer.feed(b"[DONE") is None
    reply = framer.feed(b"\x00rest")
    assert reply is not None
    assert reply.kind is ReplyKind.MALFORMED
    framer = ReplyFramer()
    assert framer.feed(b"[DONE {}") is None
    assert framer.eof().kind is ReplyKind.DROPPED
    framer = ReplyFramer()
    assert framer.feed(b"[DONE {}]  \n") is not None
    framer = ReplyFramer()
    assert framer.feed(b"[" * 4000) is None
    big = framer.feed(b"[" * (MAX_REPLY_BYTES - 3000))
    assert big is not None
    assert big.kind is ReplyKind.MALFORMED
    assert "longer than 8192" in big.detail


def test_line_framer_splits_lines_and_survives_an_oversized_one() -> None:
    framer = LineFramer()
    framer.feed(b"[DONE {}]\r\n\n[ERROR no]\n[DONE")
    first, second = framer.next_reply(), framer.next_reply()
    assert first is not None
    assert first.kind is ReplyKind.DONE
    assert second is not None
    assert second.kind is ReplyKind.ERROR
    assert framer.next_reply() is None
    assert framer.pending == 5
    framer.feed(b" {}]\n")
    third = framer.next_reply()
    assert third is not None
    assert third.kind is ReplyKind.DONE
    framer.feed(b"x" * (MAX_REPLY_BYTES + 10))
    too_long = framer.next_reply()
    assert too_long is not None
    assert too_long.kind is ReplyKind.MALFORMED
    framer.feed(b"y" * 100 + b"\n[DONE]\n")
    after = framer.next_reply()
    assert after is not None
    assert after.kind is ReplyKind.DONE


def test_the_simulators_replies_parse_back() -> None:
    fields = {name: bit_string(0) for name in STATE_NAMES}
    fields.update(EXPOSING=bit_string(15), ready=False, width=64, height=48, cmd_error=False)
    reply = parse_reply(done_reply(fields))
    assert reply.kind is ReplyKind.DONE
    assert reply.status is not None
    assert reply.status.exposing
    assert (reply.status.width, reply.status.height) == (64, 48)
    assert bit_string(15) == "1111"
    assert bit_string(5) == "0101"
    error = parse_reply(error_reply("bad [thing]\n"))
    assert error.kind is ReplyKind.ERROR
    assert error.detail == "bad ?thing??"


def test_parse_command_keeps_the_header_value_whole() -> None:
    command = parse_command(b"header COMMENT 'no comment'  \n")
    assert command is not None
    assert command.verb == "header"
    assert command.rest == "COMMENT 'no comment'"
    assert command.args == ("COMMENT", "'no", "comment'")
    assert parse_command(b"  \x00") is None
