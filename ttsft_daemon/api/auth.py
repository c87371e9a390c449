"""The bearer token of write requests: read from `api.token_file` at each write (a rotated token takes effect at
once), compared in constant time. No token file configured: writes are refused (403), reads stay open."""

from __future__ import annotations

import hmac
import os
import stat

import structlog

from ttsft_daemon.config import ApiConfig

log = structlog.get_logger(__name__)

MAX_TOKEN_BYTES = 4096


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def read_token(cfg: ApiConfig) -> str:
    """The configured token; AuthError(403) when writes are not enabled or the file cannot serve as a token."""
    if cfg.token_file is None:
        raise AuthError(403, "writes are disabled: set api.token_file to a file holding a token (for example "
                             "`openssl rand -hex 32 > token`, readable by the daemon's user only) and reload")
    try:
        fd = os.open(cfg.token_file, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            raw = os.read(fd, MAX_TOKEN_BYTES + 1) if stat.S_ISREG(st.st_mode) else b""
        finally:
            os.close(fd)
    except OSError as exc:
        log.error("API token file unreadable: writes refused", path=str(cfg.token_file), error=str(exc))
        raise AuthError(403, "writes are disabled: the token file api.token_file cannot be read "
                             "(see the daemon's log)") from None
    token = raw.decode("utf-8", "replace").strip()
    if not token or len(raw) > MAX_TOKEN_BYTES or len(token) < 16 or any(c.isspace() for c in token):
        log.error("API token file holds no usable token (one line, 16 to 4096 characters, no spaces): writes refused",
                  path=str(cfg.token_file))
        raise AuthError(403, "writes are disabled: api.token_file holds no usable token (see the daemon's log)")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("API token file is readable by other users: chmod 600 it", path=str(cfg.token_file))
    return token


def check_bearer(cfg: ApiConfig, authorization: str | None) -> None:
    """Raise AuthError (403: writes disabled; 401: no or wrong token) unless `authorization` carries the token."""
    token = read_token(cfg)
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise AuthError(401, "this request needs the header 'Authorization: Bearer <token>' (the token is in "
                             "the file named by api.token_file)")
    if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode("utf-8")):
        raise AuthError(401, "wrong token: send 'Authorization: Bearer <token>' with the token in api.token_file")
