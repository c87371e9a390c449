"""Logging configuration: stderr rendering, journal field mapping, stdlib forwarding, reconfiguration."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from ttsft_daemon import logs
from ttsft_daemon.logs import configure_logging, get_logger, journal_field_name, reset_logging

FIELD_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    reset_logging()


class Journal:
    """Collects what the configured logger would send to journald."""

    def __init__(self) -> None:
        self.entries: list[dict[str, str]] = []

    def __call__(self, fields: Mapping[str, str]) -> None:
        self.entries.append(dict(fields))


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_event_dicts_carry_the_bound_values() -> None:
    configure_logging(journal="off", stream=io.StringIO())
    log = get_logger("ttsft_daemon.stages.segment").bind(job_id="3fa2c1d0", voice="anna")
    with structlog.testing.capture_logs() as captured:
        log.info("clip saved", clip="3fa2c1d0-000120", duration_s=4.5)
    assert captured == [{"event": "clip saved", "log_level": "info", "job_id": "3fa2c1d0", "voice": "anna",
                         "clip": "3fa2c1d0-000120", "duration_s": 4.5}]


def test_json_lines_when_not_a_tty() -> None:
    out = io.StringIO()
    configure_logging(journal="off", stream=out)
    get_logger("t").info("ingested", job_id="ab12", path=Path("/x/y.mp3"), size=3)
    (line,) = json_lines(out)
    assert line["event"] == "ingested"
    assert line["level"] == "info"
    assert line["logger"] == "t"
    assert line["job_id"] == "ab12"
    assert line["path"] == "/x/y.mp3"
    assert line["size"] == 3
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", str(line["timestamp"]))


def test_console_renderer_on_a_tty() -> None:
    leader, follower = os.openpty()
    with os.fdopen(follower, "w", closefd=True) as tty:
        configure_logging(journal="off", stream=tty)
        get_logger("t").warning("disk nearly full", free_gb=1.5)
        tty.flush()
        text = os.read(leader, 65536).decode()
    os.close(leader)
    assert "disk nearly full" in text
    assert "free_gb" in text
    assert not text.lstrip().startswith("{")


def test_level_filters_structlog_and_stdlib() -> None:
    out = io.StringIO()
    configure_logging(level="warning", fmt="json", journal="off", stream=out)
    get_logger("t").info("hidden")
    get_logger("t").warning("shown")
    logging.getLogger("some.library").info("hidden too")
    logging.getLogger("some.library").error("library failed: %s", "boom")
    assert [line["event"] for line in json_lines(out)] == ["shown", "library failed: boom"]


def test_journal_fields_are_mapped_and_sanitized() -> None:
    journal = Journal()
    out = io.StringIO()
    configure_logging(level="debug", fmt="json", journal="on", stream=out, journal_sender=journal)
    get_logger("ttsft_daemon.stages.transcribe").warning(
        "clip rejected", job_id="3fa2c1d0", stage="transcribe", voice="anna", clip="3fa2c1d0-000120",
        duration_s=4.5, reasons=["no_speech", "rate"], **{"no-speech.prob": 0.93, "2nd": True,
                                                          "message": "user key", "_private": 1},
    )
    (entry,) = journal.entries
    expected = {
        "MESSAGE": "clip rejected", "PRIORITY": "4", "SYSLOG_IDENTIFIER": "ttsft-daemon",
        "JOB_ID": "3fa2c1d0", "STAGE": "transcribe", "VOICE": "anna", "CLIP": "3fa2c1d0-000120",
        "DURATION_S": "4.5", "REASONS": '["no_speech", "rate"]', "NO_SPEECH_PROB": "0.93",
        "F_2ND": "true", "X_MESSAGE": "user key", "PRIVATE": "1",
        "LOGGER": "ttsft_daemon.stages.transcribe",
    }
    assert {k: v for k, v in entry.items() if not k.startswith("CODE_")} == expected
    assert entry["CODE_FILE"] == __file__
    assert entry["CODE_FUNC"] == "test_journal_fields_are_mapped_and_sanitized"
    assert int(entry["CODE_LINE"]) > 0
    assert all(FIELD_NAME.match(name) for name in entry)
    (line,) = json_lines(out)  # stderr stays on, without the journal-only call-site keys
    assert line["event"] == "clip rejected"
    assert not {"pathname", "lineno", "func_name"} & set(line)


@pytest.mark.parametrize(("method", "priority"), [("debug", "7"), ("info", "6"), ("warning", "4"),
                                                  ("error", "3"), ("critical", "2")])
def test_priority_follows_the_level(method: str, priority: str) -> None:
    journal = Journal()
    configure_logging(level="debug", journal="on", stream=io.StringIO(), journal_sender=journal)
    getattr(get_logger("t"), method)("something")
    assert journal.entries[0]["PRIORITY"] == priority


def test_exception_goes_to_both_outputs() -> None:
    journal = Journal()
    out = io.StringIO()
    configure_logging(fmt="json", journal="on", stream=out, journal_sender=journal)
    try:
        raise ValueError("bad header")
    except ValueError:
        get_logger("t").exception("ingest failed", job_id="ab")
    (entry,) = journal.entries
    assert entry["PRIORITY"] == "3"
    assert entry["MESSAGE"] == "ingest failed"
    assert entry["EXCEPTION"].startswith("Traceback (most recent call last):")
    assert entry["EXCEPTION"].endswith("ValueError: bad header")
    (line,) = json_lines(out)
    assert "ValueError: bad header" in str(line["exception"])


def test_stdlib_records_are_forwarded_with_their_call_site() -> None:
    journal = Journal()
    out = io.StringIO()
    configure_logging(fmt="json", journal="on", stream=out, journal_sender=journal)
    logging.getLogger("faster_whisper").warning("Processing audio with duration %s", "00:04")
    (line,) = json_lines(out)
    assert line["event"] == "Processing audio with duration 00:04"
    assert line["logger"] == "faster_whisper"
    assert line["level"] == "warning"
    (entry,) = journal.entries
    assert entry["LOGGER"] == "faster_whisper"
    assert entry["CODE_FILE"] == __file__
    assert entry["CODE_FUNC"] == "test_stdlib_records_are_forwarded_with_their_call_site"


def test_stdlib_exceptions_keep_their_traceback() -> None:
    journal = Journal()
    out = io.StringIO()
    configure_logging(fmt="json", journal="on", stream=out, journal_sender=journal)
    table: dict[str, int] = {}
    try:
        table["missing"]
    except KeyError:
        logging.getLogger("lib").exception("lookup failed")
    (line,) = json_lines(out)
    assert "KeyError: 'missing'" in str(line["exception"])
    assert journal.entries[0]["EXCEPTION"].endswith("KeyError: 'missing'")
    assert journal.entries[0]["PRIORITY"] == "3"


def test_custom_stdlib_levels_map_to_the_standard_ones() -> None:
    out = io.StringIO()
    configure_logging(fmt="json", journal="off", stream=out)
    logging.getLogger("lib").log(25, "between info and warning")
    logging.getLogger("lib").log(60, "above critical")
    assert [(line["level"], line["event"]) for line in json_lines(out)] == [
        ("info", "between info and warning"), ("critical", "above critical")]


def test_auto_journal_follows_the_socket(tmp_path: Path) -> None:
    journal = Journal()
    socket_path = tmp_path / "journal.socket"
    configure_logging(journal="auto", stream=io.StringIO(), journal_sender=journal, journal_socket=socket_path)
    get_logger("t").info("no journald here")
    assert journal.entries == []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(socket_path))
        configure_logging(journal="auto", stream=io.StringIO(), journal_sender=journal,
                          journal_socket=socket_path)
        get_logger("t").info("journald listens")
    assert [e["MESSAGE"] for e in journal.entries] == ["journald listens"]


def test_stderr_copy_left_out_when_stderr_is_the_journal(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    journal = Journal()
    with (tmp_path / "stderr").open("w+") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging(fmt="json", journal="on", stream=stream, journal_sender=journal)
        get_logger("t").info("once only")
        stream.seek(0)
        assert stream.read() == ""
    assert [e["MESSAGE"] for e in journal.entries] == ["once only"]


def test_failed_journal_send_falls_back_to_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(fields: Mapping[str, str]) -> None:
        raise OSError("journald gone")

    with (tmp_path / "stderr").open("w+") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging(fmt="json", journal="on", stream=stream, journal_sender=broken)
        get_logger("t").error("still visible")
        stream.seek(0)
        assert json.loads(stream.read())["event"] == "still visible"


def test_reconfiguring_redirects_existing_loggers() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging(fmt="json", journal="off", stream=first)
    log = get_logger("t")
    log.info("one")
    configure_logging(fmt="console", journal="off", stream=second, level="debug")
    log.debug("two")
    assert [line["event"] for line in json_lines(first)] == ["one"]
    assert "two" in second.getvalue()
    assert not second.getvalue().startswith("{")
    assert sum(isinstance(h, logs._ForwardToStructlog) for h in logging.getLogger().handlers) == 1


def test_default_stream_is_the_current_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(fmt="json", journal="off")
    get_logger("t").info("to stderr")
    assert json.loads(capsys.readouterr().err)["event"] == "to stderr"


def test_concurrent_logging_keeps_lines_whole() -> None:
    out = io.StringIO()
    configure_logging(fmt="json", journal="off", stream=out)

    def work(n: int) -> None:
        log = get_logger("worker").bind(thread=n)
        for i in range(200):
            log.info("step", i=i, payload="x" * 200)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = json_lines(out)
    assert len(lines) == 1600
    assert {(line["thread"], line["i"]) for line in lines} == {(n, i) for n in range(8) for i in range(200)}


@pytest.mark.parametrize(("kwargs", "word"), [({"level": "loud"}, "level"), ({"fmt": "xml"}, "format"),
                                              ({"journal": "yes"}, "journal")])
def test_bad_settings_are_refused(kwargs: dict[str, Any], word: str) -> None:
    with pytest.raises(ValueError, match=word):
        configure_logging(**kwargs)


@pytest.mark.parametrize(("key", "name"), [("job_id", "JOB_ID"), ("durationSeconds", "DURATIONSECONDS"),
                                           ("a.b-c d", "A_B_C_D"), ("9lives", "F_9LIVES"), ("__x", "X"),
                                           ("", "F_"), ("priority", "X_PRIORITY"), ("ü", "F_"),
                                           ("k" * 80, "K" * 64)])
def test_journal_field_names(key: str, name: str) -> None:
    assert journal_field_name(key) == name


@given(st.text(max_size=100))
def test_any_key_becomes_a_valid_field_name(key: str) -> None:
    assert FIELD_NAME.match(journal_field_name(key))


NATIVE_RECEIVER = textwrap.dedent("""
    import json, os, socket, subprocess, sys
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/systemd"], check=True)
    os.makedirs("/run/systemd/journal")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("/run/systemd/journal/socket")
    from ttsft_daemon.logs import configure_logging, get_logger
    configure_logging(journal="auto", fmt="json")
    get_logger("native").warning("multi\\nline", job_id="j1", stage="ingest")
    server.settimeout(10)
    sys.stdout.buffer.write(server.recv(1 << 20))
""")


def parse_native(datagram: bytes) -> dict[str, str]:
    """journald's native protocol: NAME=value\\n, or NAME\\n<u64 little-endian size><value>\\n."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(datagram):
        end = datagram.index(b"\n", pos)
        line = datagram[pos:end]
        if b"=" in line:
            name, value = line.split(b"=", 1)
            pos = end + 1
        else:
            (size,) = struct.unpack_from("<Q", datagram, end + 1)
            name, value = line, datagram[end + 9:end + 9 + size]
            pos = end + 9 + size + 1
        fields[name.decode()] = value.decode()
    return fields


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare for a private /run/systemd")
def test_real_journal_protocol_in_a_private_mount_namespace() -> None:
    """The real systemd-python sender, received on a journal socket of our own (nothing touches the host)."""
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", NATIVE_RECEIVER],
        capture_output=True, timeout=60, cwd=Path(__file__).resolve().parents[1], check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    fields = parse_native(proc.stdout)
    assert fields["MESSAGE"] == "multi\nline"
    assert fields["PRIORITY"] == "4"
    assert fields["SYSLOG_IDENTIFIER"] == "ttsft-daemon"
    assert fields["JOB_ID"] == "j1"
    assert fields["STAGE"] == "ingest"
    assert fields["LOGGER"] == "native"
    assert fields["CODE_FUNC"] == "<module>"
    assert json.loads(proc.stderr.decode())["event"] == "multi\nline"  # stderr copy stays on
