"""A small sd_notify(3) client: tells systemd about readiness, status, watchdog pings and stopping.

The protocol is one AF_UNIX datagram per call to the socket named by $NOTIFY_SOCKET (a path, or an
abstract address written with a leading '@'), holding newline-separated VAR=value assignments.
Without NOTIFY_SOCKET (not started by systemd, or Type= is not notify) every call is a no-op that
returns False. Sending never raises: a daemon must not fail because its supervisor went away.

Why not `systemd.daemon.notify` (systemd-python, a dependency already): libsystemd's sd_notify blocks when the
receiver stops reading. Measured here (systemd-python 235, a bound socket nobody reads): the first call that found
the queue full never returned (killed after 20 s), so a stalled systemd would hang the daemon's main loop and with
it the watchdog. This client sends with a time limit instead (`send_timeout`); tests/test_notify.py checks it.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from ttsft_daemon.logs import get_logger

log = get_logger(__name__)


def _socket_address(value: str) -> str | None:
    """The address to send to, or None when NOTIFY_SOCKET is unset or of a kind we cannot use."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between watchdog pings: half of WATCHDOG_USEC, or None when no watchdog applies to us.

    systemd sets WATCHDOG_USEC (and WATCHDOG_PID) when the unit has WatchdogSec=; a WATCHDOG_PID naming
    another process (the variable was inherited) means the watchdog is not ours.
    """
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2_000_000


class Notifier:
    """Sends sd_notify messages; every method returns True when the message was handed to systemd."""

    def __init__(self, env: Mapping[str, str] | None = None, send_timeout: float = 2.0) -> None:
        """`env` defaults to os.environ. A send waits at most `send_timeout` seconds for room in the
        socket's queue (a supervisor that stopped reading must not hang the daemon)."""
        env = os.environ if env is None else env
        self._env = dict(env)
        self._send_timeout = send_timeout
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        if env.get("NOTIFY_SOCKET") and self._address is None:
            log.warning("NOTIFY_SOCKET not usable, systemd notifications are off",
                        notify_socket=env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        """Whether systemd is listening (NOTIFY_SOCKET is set to a usable address)."""
        return self._address is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog() calls (half of WatchdogSec), None when the unit has no watchdog."""
        return watchdog_interval(self._env)

    def send(self, **assignments: str | int) -> bool:
        """Send VAR=value assignments in one datagram; newlines in values become spaces."""
        if self._address is None:
            return False
        lines = [f"{name}={str(value).replace(chr(10), ' ')}" for name, value in assignments.items()]
        payload = "\n".join(lines).encode("utf-8")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.settimeout(self._send_timeout)
                sock.sendto(payload, self._address)
        except OSError as exc:
            log.debug("sd_notify failed", error=str(exc), assignments=lines)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up (or a reload) is complete; systemd then reports the unit as active."""
        if status is None:
            return self.send(READY=1)
        return self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """STATUS=...: one line shown by `systemctl status`."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """WATCHDOG=1: the keep-alive ping; call it every watchdog_interval() seconds while healthy."""
        return self.send(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: shutdown has begun."""
        if status is None:
            return self.send(STOPPING=1)
        return self.send(STOPPING=1, STATUS=status)

    def reloading(self) -> bool:
        """RELOADING=1 (with MONOTONIC_USEC, which Type=notify-reload needs); send ready() when done."""
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=...: ask for more time to start or stop (e.g. the trainer saving)."""
        return self.send(EXTEND_TIMEOUT_USEC=max(1, round(seconds * 1_000_000)))
