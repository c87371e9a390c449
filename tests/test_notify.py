"""sd_notify client against a real AF_UNIX datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ttsft_daemon.daemon.notify import Notifier, watchdog_interval


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: one datagram per notification."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(10)

    def receive(self) -> dict[str, str]:
        lines = self.sock.recv(65536).decode().split("\n")
        return dict(line.split("=", 1) for line in lines)

    def nothing_pending(self) -> bool:
        self.sock.setblocking(False)
        try:
            self.sock.recv(65536)
        except BlockingIOError:
            return True
        finally:
            self.sock.settimeout(10)
        return False


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[tuple[FakeSystemd, dict[str, str]]]:
    path = str(tmp_path / "notify.sock")
    fake = FakeSystemd(path)
    yield fake, {"NOTIFY_SOCKET": path}
    fake.sock.close()


def test_messages_arrive(systemd: tuple[FakeSystemd, dict[str, str]]) -> None:
    fake, env = systemd
    notifier = Notifier(env)
    assert notifier.enabled
    assert notifier.ready()
    assert fake.receive() == {"READY": "1"}
    assert notifier.status("3 jobs in flight\nsecond line")
    assert fake.receive() == {"STATUS": "3 jobs in flight second line"}
    assert notifier.watchdog()
    assert fake.receive() == {"WATCHDOG": "1"}
    assert notifier.ready(status="idle")
    assert fake.receive() == {"READY": "1", "STATUS": "idle"}
    assert notifier.stopping(status="stopping: trainer saving")
    assert fake.receive() == {"STOPPING": "1", "STATUS": "stopping: trainer saving"}
    assert notifier.stopping()
    assert fake.receive() == {"STOPPING": "1"}
    assert notifier.extend_timeout(90)
    assert fake.receive() == {"EXTEND_TIMEOUT_USEC": "90000000"}


def test_reloading_carries_the_monotonic_clock(systemd: tuple[FakeSystemd, dict[str, str]]) -> None:
    fake, env = systemd
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert Notifier(env).reloading()
    message = fake.receive()
    assert message["RELOADING"] == "1"
    assert before <= int(message["MONOTONIC_USEC"]) <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def test_abstract_socket_address() -> None:
    name = f"ttsft-test-{uuid.uuid4().hex}"
    fake = FakeSystemd("\0" + name)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert fake.receive() == {"READY": "1"}
    finally:
        fake.sock.close()


def test_from_a_child_process_environment(systemd: tuple[FakeSystemd, dict[str, str]]) -> None:
    """As under systemd: the daemon process finds NOTIFY_SOCKET in its own environment."""
    fake, env = systemd
    code = "from ttsft_daemon.daemon.notify import Notifier; n = Notifier(); assert n.ready(); assert n.watchdog()"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[1])
    assert fake.receive() == {"READY": "1"}
    assert fake.receive() == {"WATCHDOG": "1"}


def test_no_socket_means_no_ops(systemd: tuple[FakeSystemd, dict[str, str]]) -> None:
    fake, _ = systemd
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    assert not notifier.reloading()
    assert fake.nothing_pending()


@pytest.mark.parametrize("value", ["relative/path", "@", "vsock:2:1234"])
def test_unusable_socket_values_disable(value: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": value})
    assert not notifier.enabled
    assert not notifier.ready()


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert notifier.enabled
    assert not notifier.ready()


def test_a_supervisor_that_stops_reading_does_not_hang_the_daemon(
        systemd: tuple[FakeSystemd, dict[str, str]]) -> None:
    fake, env = systemd
    notifier = Notifier(env, send_timeout=0.05)
    results = [notifier.watchdog() for _ in range(30)]  # the queue holds ~10 (net.unix.max_dgram_qlen)
    assert results[0]
    assert not results[-1]
    assert fake.receive() == {"WATCHDOG": "1"}


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "60000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": "1"}, pid=4242) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}) is None
    notifier = Notifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "120000000"})
    assert notifier.watchdog_interval() == 60.0
