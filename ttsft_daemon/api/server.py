"""uvicorn in a thread of the daemon: its own event loop, its own socket (bound here, so a port in use is a clear
error in the log), no signal handlers (the daemon owns them), a bound on connections, and a short grace on stop
(an upload cut off by a stop leaves no file: its temporary is removed).

Socket activation: when systemd passes a listening socket (deploy/ttsft-daemon.socket: LISTEN_PID, LISTEN_FDS, the
socket as fd 3), the API serves on it instead of binding `api.listen`. The service then keeps PrivateNetwork=yes and
RestrictAddressFamilies=AF_UNIX: it never creates an Internet socket, it only accepts on the one it was given."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

import structlog

from ttsft_daemon.api.app import DaemonLike, build_app
from ttsft_daemon.api.uploads import cleanup_temporaries
from ttsft_daemon.config import parse_listen
from ttsft_daemon.core.spool import Layout

log = structlog.get_logger(__name__)

API_THREAD = "ttsft-api"
MAX_CONNECTIONS = 128  # beyond this, uvicorn answers 503
STOP_GRACE_SECONDS = 3.0


class ApiServer:
    def __init__(self, daemon: DaemonLike) -> None:
        self.daemon = daemon
        self._server: object | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.address: tuple[str, int] | None = None

    def start(self, wait_seconds: float = 10.0) -> bool:
        """Listen and serve in the background; False (logged) when the address cannot be used."""
        import uvicorn

        cfg = self.daemon.config
        host, port = parse_listen(cfg.api.listen)
        removed = cleanup_temporaries(Layout(cfg.paths.root).inbox)
        try:
            inherited = inherited_socket()
            self._socket = inherited or _bind(host, port)
        except OSError as exc:
            log.error("API cannot listen: the daemon runs without it", listen=cfg.api.listen, error=str(exc))
            return False
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start-up chatter; errors still show
        server = uvicorn.Server(uvicorn.Config(
            build_app(self.daemon), loop="asyncio", http="h11", ws="none", lifespan="off", interface="asgi3",
            log_config=None, access_log=False, server_header=False, date_header=True, proxy_headers=False,
            timeout_keep_alive=5, timeout_graceful_shutdown=int(STOP_GRACE_SECONDS), limit_concurrency=MAX_CONNECTIONS,
            h11_max_incomplete_event_size=16 * 1024,
        ))
        self._server = server
        sock = self._socket
        self._thread = threading.Thread(target=self._run, args=(server, sock), name=API_THREAD, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + wait_seconds
        while not server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        name = sock.getsockname()
        self.address = (str(name[0]), int(name[1])) if isinstance(name, tuple) else None
        if not server.started:
            log.error("API did not start", listen=cfg.api.listen)
            return False
        where = f"{name[0]}:{name[1]}" if isinstance(name, tuple) else f"unix:{name}"
        log.info("API listening", url=f"http://{where}/", docs=f"http://{where}/docs",
                 socket="from systemd (socket activation)" if inherited else "bound by the daemon",
                 writes="enabled" if cfg.api.token_file else "refused (no api.token_file)",
                 upload_temporaries_removed=removed)
        return True

    def _run(self, server: object, sock: socket.socket) -> None:
        import uvicorn

        assert isinstance(server, uvicorn.Server)
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # SystemExit from uvicorn included: the daemon goes on without the API
            log.error("API server stopped unexpectedly", error=f"{type(exc).__name__}: {exc}")

    def stop(self, timeout: float = STOP_GRACE_SECONDS + 5.0) -> None:
        server, thread = self._server, self._thread
        if server is not None:
            server.should_exit = True  # type: ignore[attr-defined]
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("API thread did not stop in time")
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
        log.info("API stopped")


def inherited_socket() -> socket.socket | None:
    """A copy of the listening socket systemd passed to this process (fd 3), or None. The original stays open for
    the life of the process, so that the API can stop and start again (reload) on the same socket."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    if count < 1:
        return None
    try:
        os.set_inheritable(3, False)  # never handed on to the trainer or ffmpeg
        sock = socket.socket(fileno=os.dup(3))
    except OSError as exc:
        log.error("socket activation: fd 3 is not a socket", error=str(exc))
        return None
    if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        log.error("socket activation: fd 3 is not a listening stream socket; binding api.listen instead")
        sock.close()
        return None
    sock.set_inheritable(False)
    return sock


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
        sock.listen(128)
        sock.set_inheritable(False)
    except OSError:
        sock.close()
        raise
    return sock
