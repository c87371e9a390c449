"""The systemd deployment: unit verification, security exposure, sysusers/tmpfiles, the config template,
and the real workloads run under the unit's system-call sandbox (deploy/sandbox_check.py)."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from tests.conftest import missing
from tests.daemon_support import log_events, metadata_rows, write_config
from ttsft_daemon.config import load_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
UNIT = DEPLOY / "ttsft-daemon.service"
VENV_PY = REPO / ".venv" / "bin" / "python"
INSTALLED_EXEC = "/opt/ttsft-daemon/.venv/bin/ttsft-daemon"
MAX_EXPOSURE = 3.0

needs_systemd_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                           reason=missing("systemd-analyze is not installed"))


def unit_settings(text: str) -> dict[str, list[str]]:
    """Active (uncommented) Key=value settings of a unit file; a key may repeat."""
    settings: dict[str, list[str]] = defaultdict(list)
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings[key.strip()].append(value.strip())
    return settings


def local_unit(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with ExecStart pointed at this checkout's console script: verify needs it to exist."""
    text = UNIT.read_text() if text is None else text
    executable = REPO / ".venv" / "bin" / "ttsft-daemon"
    assert executable.exists(), "the console script is missing: run `make install`"
    path = tmp_path / "ttsft-daemon.service"
    path.write_text(text.replace(INSTALLED_EXEC, str(executable)))
    return path


def gpu_variant(text: str) -> str:
    """The unit as its comments say to change it for several NVIDIA GPUs."""
    settings = text.split("# --- Devices: CPU only")[0]
    gpu = text.split("# --- Devices: NVIDIA GPU")[1].split("[Install]")[0]
    settings = re.sub(r"^(IPAddressDeny|RestrictAddressFamilies)=.*$", "", settings, flags=re.M)
    enabled = [line[1:] for line in gpu.splitlines() if re.match(r"^#[A-Za-z]+=", line)]
    return settings + "\n".join(enabled) + "\n\n[Install]\nWantedBy=multi-user.target\n"


def exposure(unit: Path) -> float:
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60, check=False)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", proc.stdout + proc.stderr)
    assert match, proc.stdout + proc.stderr
    return float(match.group(1))


# ------------------------------------------------------------------------------------------ unit file


def test_unit_has_the_required_service_settings() -> None:
    s = unit_settings(UNIT.read_text())
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == [f"{INSTALLED_EXEC} run --config /etc/ttsft-daemon/config.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert int(s["RestartSec"][0]) > 0
    assert int(s["WatchdogSec"][0]) >= 60
    # The daemon gives its workers and the trainer 60 s to stop; systemd must wait longer than that.
    assert int(s["TimeoutStopSec"][0]) >= 90
    assert s["User"] == s["Group"] == ["ttsft"]
    assert s["StateDirectory"] == ["ttsft-daemon"]
    assert s["ConfigurationDirectory"] == ["ttsft-daemon"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["ProtectSystem"] == ["strict"]
    assert s["SystemCallFilter"][0] == "@system-service"
    assert "MemoryDenyWriteExecute" not in s  # see test_write_execute_memory_is_needed_by_*


@needs_systemd_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    unit = local_unit(tmp_path)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    # verify only warns about unknown keys or bad values: any line about our unit is a defect.
    assert "ttsft-daemon.service" not in proc.stderr, proc.stderr


@needs_systemd_analyze
def test_gpu_variant_verifies(tmp_path: Path) -> None:
    text = gpu_variant(UNIT.read_text())
    s = unit_settings(text)
    assert s["PrivateDevices"] == ["no"]
    assert s["DeviceAllow"] == ["char-nvidia* rw"]
    assert s["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    unit = local_unit(tmp_path, text)
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "ttsft-daemon.service" not in proc.stderr, proc.stderr
    score = exposure(unit)
    print(f"systemd-analyze security exposure, GPU/DDP variant: {score}")
    assert score <= MAX_EXPOSURE


@needs_systemd_analyze
def test_security_exposure_is_ok(tmp_path: Path) -> None:
    score = exposure(local_unit(tmp_path))
    print(f"systemd-analyze security exposure: {score}")
    assert score <= MAX_EXPOSURE
    assert f"rates this unit {score}" in UNIT.read_text()  # the number quoted in the unit's header


# --------------------------------------------------------------------------- users, directories, config


SCRATCH_TOOLS = ("systemd-sysusers", "systemd-tmpfiles", "unshare", "setpriv")

# Inside a private mount namespace the scratch root's passwd/group stand in for the host's, so that
# tmpfiles resolves "ttsft" in its ACL; then a user of group ttsft (uid 4321, umask 022) drops files
# into the inbox, one in a voice sub-folder of her own, and the daemon's user removes them.
INBOX_PERMISSIONS = """
set -e
mount --bind "$ROOT/etc/passwd" /etc/passwd
mount --bind "$ROOT/etc/group" /etc/group
systemd-tmpfiles --root="$ROOT" --create
INBOX="$ROOT/var/lib/ttsft-daemon/inbox"
setpriv --reuid=4321 --regid=4321 --groups="$GID" sh -c \
    'umask 022 && mkdir "$0/anna" && echo x > "$0/anna/talk.wav" && echo x > "$0/top.wav"' "$INBOX"
setpriv --reuid="$UID_" --regid="$GID" --clear-groups sh -c 'rm "$0/anna/talk.wav" "$0/top.wav"' "$INBOX"
"""


@pytest.mark.skipif(any(shutil.which(tool) is None for tool in SCRATCH_TOOLS) or os.geteuid() != 0,
                    reason=f"needs root and {', '.join(SCRATCH_TOOLS)}")
def test_sysusers_and_tmpfiles_in_a_scratch_root() -> None:
    root = Path(tempfile.mkdtemp(prefix="ttsft-root-", dir="/tmp"))  # traversable by the test users
    try:
        root.chmod(0o755)
        for kind in ("sysusers.d", "tmpfiles.d"):
            (root / "etc" / kind).mkdir(parents=True)
            shutil.copy(DEPLOY / kind / "ttsft-daemon.conf", root / "etc" / kind)
        subprocess.run(["systemd-sysusers", f"--root={root}"], check=True, capture_output=True, timeout=60)
        (entry,) = [line for line in (root / "etc/passwd").read_text().splitlines()
                    if line.startswith("ttsft:")]
        _, _, uid, gid, _, home, shell = entry.split(":")
        assert (home, shell) == ("/var/lib/ttsft-daemon", "/usr/sbin/nologin")
        assert int(uid) < 1000  # a system user
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", INBOX_PERMISSIONS],
                              env={**os.environ, "ROOT": str(root), "UID_": uid, "GID": gid},
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr
        assert "Failed" not in proc.stderr, proc.stderr
        inbox = root / "var/lib/ttsft-daemon/inbox"
        assert sorted(p.name for p in inbox.rglob("*")) == ["anna"]  # the daemon's user removed both files
        expected = {"var/lib/ttsft-daemon": 0o750, "var/lib/ttsft-daemon/inbox": 0o2770,
                    "var/cache/ttsft-daemon": 0o750, "var/cache/ttsft-daemon/numba": 0o750}
        for rel, mode in expected.items():
            st = (root / rel).stat()
            assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (mode, int(uid), int(gid)), rel
        unit = unit_settings(UNIT.read_text())
        assert f"/var/lib/{unit['StateDirectory'][0]}" == home
        assert "NUMBA_CACHE_DIR=/var/cache/ttsft-daemon/numba" in unit["Environment"]
    finally:
        shutil.rmtree(root)


def test_production_config_template_is_valid() -> None:
    cfg = load_config(DEPLOY / "config.yaml")
    assert cfg.paths.root == Path("/var/lib/ttsft-daemon")
    assert cfg.paths.models == Path("/opt/ttsft-daemon/models")
    assert cfg.separation.python_path == Path("/opt/ttsft-daemon/.venv-spleeter/bin/python")
    assert cfg.logging.format == "json"
    assert cfg.logging.journal == "auto"
    # the service has no network: the Whisper model must resolve to a folder under paths.models
    assert not cfg.transcription.model.startswith(("http", "openai/"))


# ------------------------------------------------------------------------- the unit's syscall sandbox



def _libseccomp_loadable() -> bool:
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return False
    return True


sandbox_available = pytest.mark.skipif(shutil.which("systemd-analyze") is None or not _libseccomp_loadable(),
                                       reason=missing("needs systemd-analyze and libseccomp"))

WORKLOADS = {
    "numba": """
import numba, numpy as np
@numba.njit(cache=True)
def peak_count(x):
    n = 0
    for i in range(1, len(x) - 1):
        n += x[i] > x[i - 1] and x[i] > x[i + 1]
    return n
print("numba", peak_count(np.array([0.0, 1.0, 0.0, 2.0, 0.0])) == 2)
""",
    "faster-whisper": """
import numpy as np
from faster_whisper import WhisperModel
model = WhisperModel("models/whisper/tiny.en", device="cpu", compute_type="int8")
segments, info = model.transcribe(np.zeros(16000, dtype=np.float32))
print("whisper", round(info.duration, 1) == 1.0 and list(segments) == [])
""",
    "piper-onnxruntime": """
import io, wave
from piper import PiperVoice
voice = PiperVoice.load("models/piper/en_US-joe-medium.onnx")
buf = io.BytesIO()
with wave.open(buf, "wb") as w:
    voice.synthesize_wav("Testing the sandbox.", w)
print("piper", len(buf.getvalue()) > 10000)
""",
    "torch-dataloader-workers": """
import torch
ds = torch.utils.data.TensorDataset(torch.randn(32, 8, 50))
model = torch.nn.Conv1d(8, 8, 3)
for (batch,) in torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2):
    model(batch).pow(2).mean().backward()
print("torch", model.weight.grad is not None)
""",
    "ffmpeg-inotify-flock": """
import subprocess, tempfile, time, pathlib
from filelock import FileLock
from watchdog.observers import Observer
from watchdog.events import FileSystemEventHandler
d = pathlib.Path(tempfile.mkdtemp())
seen = []
class H(FileSystemEventHandler):
    def on_any_event(self, event): seen.append(event.src_path)
obs = Observer(); obs.schedule(H(), str(d)); obs.start()
subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "sine=d=1", str(d / "a.wav")], check=True)
with FileLock(str(d / "x.lock"), timeout=5):
    pass
time.sleep(1); obs.stop(); obs.join()
print("ffmpeg+inotify+flock", (d / "a.wav").stat().st_size > 1000 and len(seen) > 0)
""",
}


def sandboxed(args: list[str], *, deny_write_execute: bool = False, unit: Path = UNIT,
              env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [str(VENV_PY), str(DEPLOY / "sandbox_check.py"), "--unit", str(unit)]
    if deny_write_execute:
        cmd.append("--deny-write-execute")
    return subprocess.run([*cmd, "--", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          env={**os.environ, **(env or {})}, check=False)


@sandbox_available
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "faster-whisper" else n
                                  for n in sorted(WORKLOADS)])
def test_workloads_run_under_the_units_syscall_filter(name: str, tmp_path: Path) -> None:
    script = tmp_path / f"workload_{name.replace('-', '_')}.py"
    script.write_text(WORKLOADS[name])
    proc = sandboxed([str(VENV_PY), str(script)], env={"NUMBA_CACHE_DIR": str(tmp_path / "numba")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("True"), proc.stdout + proc.stderr[-3000:]


@sandbox_available
def test_sandbox_blocks_what_the_unit_forbids() -> None:
    code = """
import os, socket
for family in (socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK):
    try:
        socket.socket(family, socket.SOCK_DGRAM)
        print("allowed", family)
    except OSError as exc:
        print("blocked", exc.errno)
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close()
try:
    os.setuid(0)
    print("setuid allowed")
except OSError as exc:
    print("setuid", exc.errno)
"""
    proc = sandboxed([str(VENV_PY), "-c", code])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:4] == [f"blocked {errno.EAFNOSUPPORT}"] * 3 + [f"setuid {errno.EPERM}"]


def _mdwe_supported() -> bool:
    proc = subprocess.run([sys.executable, "-c", "import ctypes; import sys; "
                           "sys.exit(ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0)"], check=False)
    return proc.returncode == 0


@sandbox_available
def test_write_execute_memory_is_needed_by_numba(tmp_path: Path) -> None:
    """Why the unit leaves MemoryDenyWriteExecute= off: numba (librosa) generates machine code at run time.

    If this starts failing because numba works under W^X, turn MemoryDenyWriteExecute=yes on in the unit.
    """
    if not _mdwe_supported():
        pytest.skip("prctl(PR_SET_MDWE) needs Linux >= 6.3")
    script = tmp_path / "numba_workload.py"
    script.write_text(WORKLOADS["numba"])
    proc = sandboxed([str(VENV_PY), str(script)], deny_write_execute=True,
                     env={"NUMBA_CACHE_DIR": str(tmp_path / "numba")})
    assert proc.returncode != 0
    assert "cannot allocate executable memory" in proc.stderr


@sandbox_available
@pytest.mark.slow
def test_write_execute_memory_is_needed_by_ctranslate2_not_onnxruntime() -> None:
    """faster-whisper (CTranslate2's oneDNN kernels) fails under W^X; Piper's onnxruntime does not."""
    if not _mdwe_supported():
        pytest.skip("prctl(PR_SET_MDWE) needs Linux >= 6.3")
    whisper = sandboxed([str(VENV_PY), "-c", WORKLOADS["faster-whisper"]], deny_write_execute=True)
    assert whisper.returncode != 0
    assert "could not create a primitive" in whisper.stderr
    piper = sandboxed([str(VENV_PY), "-c", WORKLOADS["piper-onnxruntime"]], deny_write_execute=True)
    assert piper.returncode == 0, piper.stderr[-2000:]


@sandbox_available
@pytest.mark.slow
def test_spleeter_runs_under_the_units_syscall_filter() -> None:
    code = """
import os, numpy as np
os.environ["MODEL_PATH"] = "models/spleeter"
from spleeter.separator import Separator
out = Separator("spleeter:2stems", multiprocess=False).separate(
    np.random.default_rng(0).standard_normal((44100 * 3, 2)).astype("float32") * 0.1)
print("spleeter", sorted(out) == ["accompaniment", "vocals"] and out["vocals"].shape == (132300, 2))
"""
    proc = sandboxed([str(REPO / ".venv-spleeter" / "bin" / "python"), "-c", code])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("True"), proc.stdout


@sandbox_available
@pytest.mark.slow
def test_daemon_builds_a_dataset_under_the_units_syscall_filter(tmp_path: Path) -> None:
    """The real daemon, sandboxed, with its sd_notify socket: READY=1, then a dataset from real speech."""
    from ttsft_daemon.demo.audio import SENTENCES, make_recording, write_media

    root = tmp_path / "state"
    (root / "inbox").mkdir(parents=True)
    rec = make_recording(list(SENTENCES[:3]), pause_range=(0.7, 1.0), music_db=None, seed=1, sr=22050)
    write_media(rec, root / "inbox" / "talk.mp3", "mp3")
    config = write_config(tmp_path / "config.yaml", root)
    notify_path = tmp_path / "notify.sock"
    messages: list[str] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.settimeout(0.2)
        done = threading.Event()

        def drain() -> None:  # as systemd does: the daemon's datagrams must not pile up
            while not done.is_set():
                try:
                    messages.append(notify.recv(4096).decode())
                except TimeoutError:
                    pass

        reader = threading.Thread(target=drain, name="notify-reader")
        reader.start()
        try:
            proc = sandboxed([str(VENV_PY), "-m", "ttsft_daemon", "run", "--config", str(config),
                              "--exit-when-idle"],
                             env={"NOTIFY_SOCKET": str(notify_path), "NUMBA_CACHE_DIR": str(tmp_path / "numba")},
                             timeout=600)
        finally:
            done.set()
            reader.join()
    (tmp_path / "daemon.log").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert any("READY=1" in m for m in messages)
    assert any("STOPPING=1" in m for m in messages)
    assert metadata_rows(root), proc.stderr[-3000:]
    events = log_events(tmp_path / "daemon.log")
    assert not [e for e in events if e.get("level") == "error"]
