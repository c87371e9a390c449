"""One structlog configuration for the whole daemon: stderr (console or JSON lines) plus the journal.

Call `configure_logging()` once at start-up and again on SIGHUP; every module logs through
`get_logger(__name__)`. Output always goes to stderr (human-readable on a TTY, JSON lines otherwise),
because `journal.send` silently drops entries when journald is absent. When the journal is in use,
each entry is also sent natively with structured fields (JOB_ID, STAGE, VOICE, CLIP, DURATION_S ...),
so `journalctl -u ttsft-daemon JOB_ID=...` finds every line of one job. The one exception: when
stderr itself is a journal stream (systemd sets JOURNAL_STREAM), the stderr copy would only duplicate
every entry, so it is left out.

Records of the standard `logging` module (faster-whisper, Lightning, ...) are forwarded into the same
pipeline.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Callable, Mapping, MutableMapping
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

import structlog
from structlog.processors import CallsiteParameter, CallsiteParameterAdder
from structlog.typing import EventDict, FilteringBoundLogger, Processor, WrappedLogger

JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
SYSLOG_IDENTIFIER = "ttsft-daemon"

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}
FORMATS = ("auto", "console", "json")
JOURNAL_MODES = ("auto", "on", "off")

# syslog priorities (sd-daemon(3)): err 3, warning 4, info 6, debug 7.
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
             "critical": 2, "fatal": 2}
# Event-dict keys that the journal knows under a well-known name.
_FIELD_NAMES = {"job_id": "JOB_ID", "stage": "STAGE", "voice": "VOICE", "clip": "CLIP",
                "duration_s": "DURATION_S"}
# Fields this module sets itself; an event-dict key that sanitizes to one of them gets an X_ prefix.
_RESERVED_FIELDS = frozenset({"MESSAGE", "MESSAGE_ID", "PRIORITY", "SYSLOG_IDENTIFIER", "SYSLOG_FACILITY",
                              "SYSLOG_PID", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "EXCEPTION"})
# Keys that never become journal fields: journald has its own timestamp, PRIORITY carries the level.
_NOT_FIELDS = frozenset({"event", "level", "timestamp", "exc_info", "exception", "stack",
                         "pathname", "lineno", "func_name", "_record", "_from_structlog"})
_CALLSITE = {CallsiteParameter.PATHNAME: "CODE_FILE", CallsiteParameter.LINENO: "CODE_LINE",
             CallsiteParameter.FUNC_NAME: "CODE_FUNC"}
_MAX_FIELD_NAME = 64  # journald drops fields with longer names
_INVALID_FIELD_CHARS = re.compile(r"[^A-Z0-9_]")

JournalSender = Callable[[Mapping[str, str]], None]
"""Sends one journal entry, given as field name -> value."""

_configure_lock = threading.Lock()


# ----------------------------------------------------------------------------------- journal fields


def journal_field_name(key: str) -> str:
    """A valid journal field name for an event-dict key: upper case, A-Z 0-9 _ only, <= 64 chars.

    Field names may not start with a digit or an underscore (leading underscores are trusted fields
    that only journald sets).
    """
    if key in _FIELD_NAMES:
        return _FIELD_NAMES[key]
    name = _INVALID_FIELD_CHARS.sub("_", key.upper()).lstrip("_")
    if not name or name[0].isdigit():
        name = "F_" + name
    if name in _RESERVED_FIELDS:
        name = "X_" + name
    return name[:_MAX_FIELD_NAME]


def _field_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except ValueError:  # circular structures
        return repr(value)


def _exception_text(event_dict: Mapping[str, Any]) -> str | None:
    text = event_dict.get("exception")
    if isinstance(text, str):
        return text
    exc_info = event_dict.get("exc_info")
    if not exc_info:
        return None
    triple: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]
    if isinstance(exc_info, BaseException):
        triple = (type(exc_info), exc_info, exc_info.__traceback__)
    elif isinstance(exc_info, tuple) and len(exc_info) == 3:
        triple = exc_info
    else:
        triple = sys.exc_info()
    if triple[0] is None:
        return None
    return "".join(traceback.format_exception(*triple)).rstrip("\n")


def journal_fields(method_name: str, event_dict: Mapping[str, Any]) -> dict[str, str]:
    """The journal entry for one log event: MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, CODE_*, the rest upper-cased."""
    level = str(event_dict.get("level", method_name)).lower()
    fields = {
        "MESSAGE": _field_value(event_dict.get("event", "")),
        "PRIORITY": str(_PRIORITY.get(level, 6)),
        "SYSLOG_IDENTIFIER": SYSLOG_IDENTIFIER,
    }
    for parameter, name in _CALLSITE.items():
        if parameter.value in event_dict:
            fields[name] = str(event_dict[parameter.value])
    exception = _exception_text(event_dict)
    if exception is not None:
        fields["EXCEPTION"] = exception
    for key, value in event_dict.items():
        if key in _NOT_FIELDS or value is None:
            continue
        fields.setdefault(journal_field_name(str(key)), _field_value(value))
    return fields


def send_to_journal(fields: Mapping[str, str]) -> None:
    """The real sender: the native journal protocol through systemd-python (a no-op without journald)."""
    from systemd import journal

    journal.sendv(*(f"{name}={value}" for name, value in fields.items()))


class _JournalProcessor:
    """Sends each event to the journal, then drops the call-site keys meant for the journal only.

    When `stderr_is_journal`, the event is dropped after sending (the stderr copy would duplicate it);
    if sending fails, it falls through to stderr instead, so nothing is lost.
    """

    def __init__(self, sender: JournalSender, stderr_is_journal: bool) -> None:
        self.sender = sender
        self.stderr_is_journal = stderr_is_journal

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        try:
            self.sender(journal_fields(method_name, event_dict))
            sent = True
        except (OSError, ValueError):
            sent = False
        for parameter in _CALLSITE:
            event_dict.pop(parameter.value, None)
        if sent and self.stderr_is_journal:
            raise structlog.DropEvent
        return event_dict


def _add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    name = getattr(logger, "name", None)
    if name is not None:
        event_dict.setdefault("logger", name)
    return event_dict


def _drop_private_keys(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    event_dict.pop("_record", None)
    event_dict.pop("_from_structlog", None)
    return event_dict


# ------------------------------------------------------------------------------------ configuration


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's WriteLogger with the name given to get_logger() (logged as the `logger` key)."""

    def __init__(self, file: Any, name: str | None) -> None:
        super().__init__(file)
        self.name = name


class _NamedWriteLoggerFactory:
    def __init__(self, file: Any) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _NamedWriteLogger:
        return _NamedWriteLogger(self._file, str(args[0]) if args else None)


class _CurrentStderr:
    """Writes to whatever sys.stderr is at write time (it may be swapped after configuration)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _is_journal_stream(stream: TextIO, env: Mapping[str, str]) -> bool:
    """True when systemd connected this stream to the journal (JOURNAL_STREAM=<device>:<inode>)."""
    expected = env.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def journal_wanted(journal: str, socket_path: Path = JOURNAL_SOCKET) -> bool:
    """Whether entries go to the journal: "on", or "auto" and journald's socket exists."""
    if journal == "on":
        return True
    if journal == "off":
        return False
    return socket_path.exists()


def _validate(level: str, fmt: str, journal: str) -> None:
    problems = []
    if level.lower() not in LEVELS:
        problems.append(f"log level {level!r} (use {', '.join(LEVELS)})")
    if fmt not in FORMATS:
        problems.append(f"log format {fmt!r} (use {', '.join(FORMATS)})")
    if journal not in JOURNAL_MODES:
        problems.append(f"journal mode {journal!r} (use {', '.join(JOURNAL_MODES)})")
    if problems:
        raise ValueError("invalid logging settings: " + "; ".join(problems))


def _processors(use_json: bool, journal_processor: _JournalProcessor | None, colors: bool) -> list[Processor]:
    chain: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if journal_processor is not None:
        chain.append(CallsiteParameterAdder(list(_CALLSITE), additional_ignores=["logging", __name__]))
        chain.append(journal_processor)
    chain.append(_drop_private_keys)
    if use_json:
        chain += [structlog.processors.format_exc_info,
                  structlog.processors.JSONRenderer(default=str, ensure_ascii=False)]
    else:
        chain.append(structlog.dev.ConsoleRenderer(colors=colors))
    return chain


def configure_logging(
    level: str = "info",
    fmt: str = "auto",
    journal: str = "auto",
    stream: TextIO | None = None,
    *,
    journal_sender: JournalSender | None = None,
    journal_socket: Path = JOURNAL_SOCKET,
) -> None:
    """Configure structlog (and forward the stdlib `logging` module into it). Safe to call again.

    level: debug | info | warning | error; fmt: auto (console on a TTY, JSON lines otherwise) |
    console | json; journal: auto (when `journal_socket` exists) | on | off. `stream` defaults to the
    current sys.stderr. `journal_sender` replaces the native journal sender (tests capture with it).
    Raises ValueError for an unknown level, format or journal mode.
    """
    _validate(level, fmt, journal)
    target: TextIO = stream if stream is not None else sys.stderr
    writer: Any = stream if stream is not None else _CurrentStderr()
    use_json = fmt == "json" or (fmt == "auto" and not _is_tty(target))
    journal_processor = None
    if journal_wanted(journal, journal_socket):
        journal_processor = _JournalProcessor(
            journal_sender or send_to_journal, stderr_is_journal=_is_journal_stream(target, os.environ)
        )
    numeric_level = LEVELS[level.lower()]
    with _configure_lock:
        structlog.configure(
            processors=_processors(use_json, journal_processor, colors=_is_tty(target)),
            wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
            logger_factory=_NamedWriteLoggerFactory(writer),
            # No caching: loggers made before a reconfiguration (SIGHUP) must follow it.
            cache_logger_on_first_use=False,
        )
        _install_stdlib_bridge(numeric_level)


def reset_logging() -> None:
    """Back to structlog's defaults and no stdlib forwarding (for tests and shutdown)."""
    with _configure_lock:
        structlog.reset_defaults()
        _remove_stdlib_bridge()


def get_logger(name: str | None = None, **initial_values: Any) -> FilteringBoundLogger:
    """A logger that follows the current configuration (also after a reconfiguration).

    `name` (usually `__name__`) is logged as the `logger` key. Loggers made with `.bind()` keep the
    configuration of the moment they were bound: bind per job, not at module level.
    """
    args = () if name is None else (name,)
    logger: FilteringBoundLogger = structlog.get_logger(*args, **initial_values)
    return logger


# ----------------------------------------------------------------------------- stdlib forwarding


class _ForwardToStructlog(logging.Handler):
    """Routes records of the standard logging module (third-party libraries) through structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a library's broken %-format must not break logging
            message = str(record.msg)
        extra: MutableMapping[str, Any] = {"logger": record.name, "_record": record}
        if record.exc_info and record.exc_info[0] is not None:
            extra["exc_info"] = record.exc_info
        structlog.get_logger().log(_standard_level(record.levelno), message, **extra)


def _standard_level(levelno: int) -> int:
    """The nearest standard level at or below a custom one (structlog knows only the standard five)."""
    standard = [level for level in sorted(LEVELS.values()) if level <= levelno]
    return standard[-1] if standard else logging.DEBUG


def _remove_stdlib_bridge() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ForwardToStructlog):
            root.removeHandler(handler)


def _install_stdlib_bridge(level: int) -> None:
    _remove_stdlib_bridge()
    root = logging.getLogger()
    root.addHandler(_ForwardToStructlog())
    # Third-party DEBUG output (numba, matplotlib ...) floods the log; keep them at INFO at most.
    root.setLevel(max(level, logging.INFO))
