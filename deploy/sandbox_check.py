#!/usr/bin/env python3
"""Run a command under the system-call sandbox of ttsft-daemon.service, without systemd.

systemd turns SystemCallFilter=, SystemCallErrorNumber=, RestrictAddressFamilies= and
MemoryDenyWriteExecute= into a seccomp filter on the service. This script builds the same kind of
filter with libseccomp (and W^X denial with prctl(PR_SET_MDWE), Linux >= 6.3), applies it to itself
and execs the command, so a host's real workloads (Whisper, Spleeter, numba, torch, CUDA, ffmpeg ...)
can be tried under the unit's rules before the unit is installed, and tests can check them:

    python3 deploy/sandbox_check.py -- .venv/bin/python -c "import torch; print(torch.ones(2).sum())"
    python3 deploy/sandbox_check.py --list-syscalls > allowed.txt   # on a host with systemd-analyze
    python3 deploy/sandbox_check.py --syscalls allowed.txt -- CMD   # on a host without it

Exit status: the command's, or 2 when the sandbox cannot be set up. It is an approximation: file
system, device and namespace settings of the unit are not reproduced.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import os
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_UNIT = Path(__file__).resolve().parent / "ttsft-daemon.service"

# libseccomp ABI (seccomp.h): actions and comparison operators.
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_GE = 5
MAX_ADDRESS_FAMILY = 64  # above AF_MAX (46 in Linux 6.x)
PR_SET_MDWE = 65
PR_MDWE_REFUSE_EXEC_GAIN = 1


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class ScmpArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


@dataclass
class UnitSandbox:
    """The unit's syscall-level settings."""

    allow: list[str] = field(default_factory=list)  # SystemCallFilter= entries, in order
    deny: list[str] = field(default_factory=list)  # SystemCallFilter=~ entries
    error_number: int = errno.EPERM
    address_families: list[str] | None = None  # RestrictAddressFamilies= allow-list; None: unrestricted
    deny_write_execute: bool = False


def parse_unit(text: str) -> UnitSandbox:
    """Read the sandbox settings from the [Service] section of a unit file."""
    sandbox = UnitSandbox()
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        if key == "SystemCallFilter":
            if value.startswith("~"):
                sandbox.deny += value[1:].split()
            else:
                sandbox.allow += value.split()
        elif key == "SystemCallErrorNumber":
            sandbox.error_number = getattr(errno, value) if not value.isdigit() else int(value)
        elif key == "RestrictAddressFamilies":
            if value.startswith("~") or value == "none":
                raise ValueError("only an allow-list of RestrictAddressFamilies= is supported here")
            sandbox.address_families = (sandbox.address_families or []) + value.split()
        elif key == "MemoryDenyWriteExecute":
            sandbox.deny_write_execute = value.lower() in ("yes", "true", "1", "on")
    return sandbox


def syscall_groups() -> dict[str, list[str]]:
    """systemd's named syscall sets (@system-service ...), from `systemd-analyze syscall-filter`."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True,
                         check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in out.splitlines():
        entry = line.strip()
        if line.startswith("@"):
            current = groups.setdefault(entry, [])
        elif current is not None and line.startswith(" ") and entry and not entry.startswith("#"):
            current.append(entry)
        elif not entry:
            current = None
    return groups


def expand(names: Iterable[str], groups: dict[str, list[str]]) -> set[str]:
    result: set[str] = set()
    for name in names:
        if name.startswith("@"):
            result |= expand(groups[name], groups)
        else:
            result.add(name)
    return result


def allowed_syscalls(sandbox: UnitSandbox) -> set[str]:
    groups = syscall_groups()
    return expand(sandbox.allow, groups) - expand(sandbox.deny, groups)


def _libseccomp() -> ctypes.CDLL:
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(ScmpArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def _family_numbers(names: Sequence[str]) -> list[int]:
    return [int(getattr(socket, name)) for name in names]


def apply_seccomp(allowed: set[str], error_number: int, families: Sequence[str] | None) -> None:
    """Load an allow-list filter: other syscalls fail with error_number, other socket families with
    EAFNOSUPPORT (as systemd does). Sets no_new_privs, like NoNewPrivileges=yes."""
    lib = _libseccomp()
    ctx = lib.seccomp_init(scmp_act_errno(error_number))
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        for name in sorted(allowed):
            number = lib.seccomp_syscall_resolve_name(name.encode())
            if number < 0 or (families is not None and name == "socket"):
                continue  # not a syscall of this architecture, or handled below
            lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 0, None)
        if families is not None and "socket" in allowed:
            _restrict_socket_families(lib, ctx, _family_numbers(families))
        if lib.seccomp_load(ctx) != 0:
            raise OSError(ctypes.get_errno(), "seccomp_load failed")
    finally:
        lib.seccomp_release(ctx)


def _restrict_socket_families(lib: ctypes.CDLL, ctx: int, families: list[int]) -> None:
    number = lib.seccomp_syscall_resolve_name(b"socket")
    for family in range(MAX_ADDRESS_FAMILY):
        action = SCMP_ACT_ALLOW if family in families else scmp_act_errno(errno.EAFNOSUPPORT)
        equal = (ScmpArgCmp * 1)(ScmpArgCmp(0, SCMP_CMP_EQ, family, 0))
        lib.seccomp_rule_add_array(ctx, action, number, 1, equal)
    beyond = (ScmpArgCmp * 1)(ScmpArgCmp(0, SCMP_CMP_GE, MAX_ADDRESS_FAMILY, 0))
    lib.seccomp_rule_add_array(ctx, scmp_act_errno(errno.EAFNOSUPPORT), number, 1, beyond)


def deny_write_execute() -> None:
    """Refuse memory that becomes executable after being writable (MemoryDenyWriteExecute=yes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE) failed (needs Linux >= 6.3)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unit", type=Path, default=DEFAULT_UNIT, help="unit file to read the rules from")
    parser.add_argument("--syscalls", type=Path, help="file of allowed syscall names (from --list-syscalls)")
    parser.add_argument("--list-syscalls", action="store_true", help="print the allowed syscalls and exit")
    parser.add_argument("--deny-write-execute", action="store_true",
                        help="apply MemoryDenyWriteExecute=yes even where the unit leaves it off")
    parser.add_argument("command", nargs="*", help="command to run under the sandbox (after --)")
    args = parser.parse_args(argv)
    sandbox = parse_unit(args.unit.read_text(encoding="utf-8"))
    if args.syscalls is not None:
        allowed = set(args.syscalls.read_text(encoding="utf-8").split())
    else:
        allowed = allowed_syscalls(sandbox)
    if args.list_syscalls:
        print("\n".join(sorted(allowed)))
        return 0
    if not args.command:
        parser.error("give a command to run, after --")
    try:
        if sandbox.deny_write_execute or args.deny_write_execute:
            deny_write_execute()
        apply_seccomp(allowed, sandbox.error_number, sandbox.address_families)
    except OSError as exc:
        print(f"sandbox_check: cannot set up the sandbox: {exc}", file=sys.stderr)
        return 2
    os.execvp(args.command[0], args.command)


if __name__ == "__main__":
    sys.exit(main())
