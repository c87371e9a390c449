"""The HTTP API (issue 17) against the real server on the loopback interface, with a real HTTP client (http.client):
served by the real daemon process (reads, uploads that end in the dataset, hostile requests, 50 concurrent uploads
exactly once, training on request, kill -9 mid-upload), and by a Daemon object in this process where no worker is
needed (writes refused without a token file, a port in use)."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.daemon_support import REPO, log_events, metadata_rows, run_daemon, start_daemon, wait_for, write_config
from ttsft_daemon.config import config_from_dict
from ttsft_daemon.daemon.service import Daemon
from ttsft_daemon.demo.audio import SENTENCES, make_recording, write_media

LIMIT_MB = 1.0


# ------------------------------------------------------------------------------------------------ client
class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)


def call(port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 60) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def multipart(name: str | None, data: bytes, field: str = "file", close: bool = True) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    disposition = f'form-data; name="{field}"' + (f'; filename="{name}"' if name is not None else "")
    body = (f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: audio/mpeg\r\n\r\n").encode()
    body += data + (f"\r\n--{boundary}--\r\n".encode() if close else b"")
    return body, f"multipart/form-data; boundary={boundary}"


def raw_request(port: int, head: str, body: bytes = b"") -> socket.socket:
    """A hand-made request on a socket (for bodies that are cut off, stall or overflow)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(head.encode() + b"\r\n" + body)
    return s


def read_status(s: socket.socket) -> int | None:
    """The status code of the reply on `s`, or None when the server reset the connection."""
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        return None
    finally:
        s.close()
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def visible_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def hidden_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if p.is_file())


# ------------------------------------------------------------------------------------------------ state
def _wav(path: Path, seconds: float = 0.3, sr: int = 22050) -> None:
    t = np.arange(int(seconds * sr)) / sr
    sf.write(str(path), (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), sr, subtype="PCM_16")


def prepare_voice(root: Path, voice: str, with_training: bool) -> None:
    """A voice as the daemon leaves it: dataset rows and WAVs, rejected clips in failed/, training records."""
    ds = root / "dataset" / voice
    (ds / "wavs").mkdir(parents=True)
    (ds / "clips").mkdir()
    rows = [(f"{voice}_000{i}.wav", f"sentence number {i}", 0.3, "guest" if i == 5 else voice, q)
            for i, q in ((1, 0.91), (2, 0.55), (3, 0.77), (4, 0.62), (5, 0.99))]
    for name, *_ in rows:
        _wav(ds / "wavs" / name)
    (ds / "metadata.csv").write_text("".join(f"{n}|{t}|{d:.3f}|{s}|{q:.4f}\n" for n, t, d, s, q in rows))
    (ds / "clips" / f"{voice}_0001.json").write_text(json.dumps({"source_name": "talk.mp3", "start": 1.0,
                                                                  "end": 1.3}))
    if not with_training:
        return
    failed = root / "failed"
    failed.mkdir(exist_ok=True)
    for clip, reason, quality in ((f"{voice}_0100", "quality gate", 0.2), (f"{voice}_0101", "hallucination", None)):
        _wav(failed / f"{clip}.wav")
        (failed / f"{clip}.wav.json").write_text(json.dumps({"text": "thank you for watching", "duration": 0.3,
                                                             **({"quality": quality} if quality else {})}))
        (failed / f"{clip}.wav.error.json").write_text(json.dumps({
            "stage": "transcribe", "reason": reason, "detail": "", "voice": voice, "item": clip, "complete": True,
            "files": [{"from": f"{clip}.wav", "name": f"{clip}.wav"},
                      {"from": f"{clip}.json", "name": f"{clip}.wav.json"}]}))
    (failed / "whole.mp3").write_text("not audio")
    (failed / "whole.mp3.error.json").write_text(json.dumps({
        "stage": "ingest", "reason": "not a readable media file", "item": f"{voice}--0123456789abcdef",
        "complete": True, "files": [{"from": "whole.mp3", "name": "whole.mp3"}]}))
    tr = root / "training" / voice
    tr.mkdir(parents=True)
    (tr / "state.json").write_text(json.dumps({"state": "finished", "epoch": 3, "step": 30,
                                               "last_checkpoint": str(tr / "checkpoints" / "last.ckpt")}))
    (tr / "progress.json").write_text(json.dumps({"epoch": 3, "step": 30, "losses": {"loss_g": 25.5,
                                                                                     "loss_d": 3.25}}))
    (tr / f"{voice}.onnx").write_bytes(b"onnx")
    (tr / f"{voice}.onnx.json").write_text("{}")
    (tr / "evaluations.json").write_text(json.dumps([{"onnx": str(tr / f"{voice}.onnx"), "epoch": 3, "wer": 0.25,
                                                      "evaluated": "2026-01-01T00:00:00+00:00"}]))
    (tr / "report.html").write_text("<!doctype html><title>report</title><h1>Voice report</h1>")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two short real mp3 recordings (the bundled Piper voice)."""
    folder = tmp_path_factory.mktemp("api-recordings")
    out = []
    for i in range(2):
        rec = make_recording([SENTENCES[2 * i], SENTENCES[2 * i + 1]], pause_range=(0.7, 0.9), music_db=None,
                             seed=40 + i, sr=22050)
        path = folder / f"talk {i}.mp3"
        write_media(rec, path, "mp3")
        out.append(path)
    return out


class Served:
    def __init__(self, root: Path, port: int, token: str, log: Path, proc: subprocess.Popen[bytes]) -> None:
        self.root, self.port, self.token, self.log, self.proc = root, port, token, log, proc

    def auth(self, **more: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **more}

    def get(self, path: str, **headers: str) -> Reply:
        return call(self.port, "GET", path, headers=headers)

    def post(self, path: str, body: bytes | None = None, **headers: str) -> Reply:
        return call(self.port, "POST", path, body=body, headers=headers)


def _api_config(tmp: Path, root: Path, port: int, token_file: Path | None, **more: dict[str, Any]) -> Path:
    api: dict[str, Any] = {"enabled": True, "listen": f"127.0.0.1:{port}", "max_upload_mb": LIMIT_MB,
                           "client_timeout_seconds": 2.0}
    if token_file is not None:
        api["token_file"] = str(token_file)
    return write_config(tmp / "config.yaml", root, api=api,
                        daemon={"retry_backoff_seconds": 0.5, "workers": {"transcribe": 1}},
                        speaker={"enabled": False},
                        training={"enabled": False, "base_checkpoint": str(tmp / "no-such-base.ckpt")}, **more)


def _token(tmp: Path) -> tuple[str, Path]:
    token = secrets.token_hex(24)
    path = tmp / "token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token, path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _api_up(port: int) -> bool:
    try:
        return call(port, "GET", "/", timeout=2).status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The daemon as a process with its API, on a state root holding a trained voice ("prepared")."""
    tmp = tmp_path_factory.mktemp("api")
    root = tmp / "state"
    prepare_voice(root, "prepared", with_training=True)
    prepare_voice(root, "trainme", with_training=False)
    prepare_voice(root, "review", with_training=False)
    token, token_file = _token(tmp)
    port = free_port()
    cfg = _api_config(tmp, root, port, token_file)
    log = tmp / "daemon.log"
    proc = start_daemon(cfg, log, exit_when_idle=False)
    try:
        assert wait_for(lambda: _api_up(port) or proc.poll() is not None, timeout=120), log.read_text()[-3000:]
        assert proc.poll() is None, log.read_text()[-3000:]
        assert wait_for(lambda: (root / "daemon.json").exists(), timeout=60)  # its first status, just after start
        yield Served(root, port, token, log, proc)
    finally:
        _stop(proc)


# ------------------------------------------------------------------------------------------------ reads
def test_read_endpoints(served: Served) -> None:
    status = served.get("/status")
    assert status.status == 200 and status.headers["content-type"].startswith("application/json")
    body = status.json()
    assert set(body["stages"]) >= {"inbox", "raw", "vocals", "audio", "transcribed", "failed"}
    assert body["voices"]["prepared"]["clips"] == 5 and body["daemon"]["running"] is True
    assert status.headers["x-content-type-options"] == "nosniff"

    voices = served.get("/voices").json()["voices"]
    assert {v["voice"] for v in voices} >= {"prepared", "trainme"}

    voice = served.get("/voices/prepared").json()
    assert voice["dataset"]["clips"] == 5
    assert voice["speakers"] == {"prepared": {"clips": 4, "seconds": 1.2}, "guest": {"clips": 1, "seconds": 0.3}}
    assert voice["training"]["state"] == "finished" and voice["training"]["epoch"] == 3
    assert voice["progress"]["losses"] == {"loss_g": 25.5, "loss_d": 3.25}
    assert voice["exports"][0]["onnx"] == "prepared.onnx" and voice["exports"][0]["wer"] == 0.25
    assert voice["rejected"] == {"total": 3, "by_reason": {"quality gate": 1, "hallucination": 1,
                                                           "not a readable media file": 1}}
    assert voice["report"] == "/voices/prepared/report"

    worst = served.get("/voices/prepared/clips?order=worst&limit=3").json()
    assert worst["total"] == 7 and [c["clip"] for c in worst["clips"]] == [
        "prepared_0101", "prepared_0100", "prepared_0002"]
    assert worst["next_offset"] == 3 and worst["reasons"] == {"quality gate": 1, "hallucination": 1}
    assert worst["clips"][0]["status"] == "rejected" and worst["clips"][0]["reason"] == "hallucination"
    rest = served.get("/voices/prepared/clips?order=worst&offset=3&limit=10").json()
    assert [c["clip"] for c in rest["clips"]] == ["prepared_0004", "prepared_0003", "prepared_0001",
                                                  "prepared_0005"]
    assert rest["next_offset"] is None and rest["clips"][2]["source"] == "talk.mp3"
    by_reason = served.get("/voices/prepared/clips?reason=quality%20gate").json()
    assert [c["clip"] for c in by_reason["clips"]] == ["prepared_0100"]
    accepted = served.get("/voices/prepared/clips?status=accepted&order=best&limit=1").json()
    assert accepted["total"] == 5 and accepted["clips"][0]["clip"] == "prepared_0005"

    for clip in ("prepared_0001", "prepared_0100"):
        audio = served.get(f"/voices/prepared/clips/{clip}/audio")
        assert audio.status == 200 and audio.headers["content-type"] == "audio/wav"
        assert audio.body[:4] == b"RIFF"
    ranged = served.get("/voices/prepared/clips/prepared_0001/audio", Range="bytes=0-3")
    assert ranged.status == 206 and ranged.body == b"RIFF"

    report = served.get("/voices/prepared/report")
    assert report.status == 200 and b"Voice report" in report.body
    assert "default-src" in report.headers["content-security-policy"]

    metrics = served.get("/metrics")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.body.decode()
    for line in ('ttsft_items{stage="inbox"} 0', 'ttsft_dataset_clips{voice="prepared"} 5',
                 'ttsft_rejects{stage="transcribe",reason="quality gate"} 1',
                 'ttsft_training_epoch{voice="prepared"} 3', 'ttsft_training_loss{voice="prepared",loss="loss_g"} 25.5',
                 'ttsft_training_state{voice="prepared",state="finished"} 1',
                 'ttsft_voice_wer{voice="prepared",onnx="prepared.onnx"} 0.25', "ttsft_daemon_running 1"):
        assert line in text.splitlines(), line
    free = [ln for ln in text.splitlines() if ln.startswith('ttsft_disk_free_bytes{path="root"}')]
    assert free and float(free[0].split()[-1]) > 0
    samples = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert all(float(ln.rsplit(" ", 1)[1]) >= 0 and ln.rsplit(" ", 1)[0].startswith("ttsft_") for ln in samples)

    schema = served.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    assert {"/status", "/voices", "/voices/{voice}", "/voices/{voice}/clips", "/voices/{voice}/clips/{clip}/audio",
            "/voices/{voice}/report", "/metrics", "/inbox/{voice}", "/voices/{voice}/train"} <= set(schema["paths"])
    assert schema["paths"]["/inbox/{voice}"]["post"]["security"] == [{"bearer": []}]
    docs = served.get("/docs")
    assert docs.status == 200 and b"/voices/{voice}/clips" in docs.body
    assert b"<script" not in docs.body and b"http://" not in docs.body and b"https://" not in docs.body


def test_review_endpoints_reject_and_relabel(served: Served) -> None:
    js = {"Content-Type": "application/json"}
    r = served.post("/voices/review/clips/review_0002/reject", b'{"reason": "music under it"}', **served.auth(**js))
    assert r.status == 200 and r.json()["action"] == "rejected", r.body
    again = served.post("/voices/review/clips/review_0002/reject", b"", **served.auth())
    assert again.status == 200 and again.json()["action"] == "unchanged"
    clip = served.get("/voices/review/clips?status=rejected").json()["clips"]
    assert [(c["clip"], c["reason"]) for c in clip] == [("review_0002", "rejected by hand")]
    r = served.post("/voices/review/clips/review_0003/relabel", b'{"text": "Call me at 5"}', **served.auth(**js))
    assert r.status == 200 and r.json()["action"] == "relabeled", r.body
    rows = (served.root / "dataset" / "review" / "metadata.csv").read_text().splitlines()
    assert len(rows) == 4 and any(row.startswith("review_0003.wav|Call me at five|") for row in rows), rows
    assert served.post("/voices/review/clips/review_0999/relabel", b'{"text": "x"}', **served.auth(**js)).status == 404
    assert served.post("/voices/review/clips/review_0003/relabel", b'{"text": ""}', **served.auth(**js)).status == 400
    assert served.post("/voices/review/clips/review_0003/relabel", b'{"txt": 1}', **served.auth(**js)).status == 400
    assert served.post("/voices/review/clips/review_0003/relabel", b"{nope", **served.auth(**js)).status == 400
    assert served.post("/voices/review/clips/review_0003/reject", b"").status == 401


# ------------------------------------------------------------------------------------------------ refusals
def test_hostile_and_unauthorised_requests_get_clear_4xx(served: Served) -> None:
    inbox = served.root / "inbox"
    # no token, wrong token, another scheme: 401, nothing written
    wrong = ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": f"Basic {served.token}"})
    for headers in wrong:
        r = served.post("/inbox/hostile?filename=a.mp3", b"data", **headers)
        assert r.status == 401 and "Bearer" in r.json()["error"]
    assert served.post("/voices/trainme/train", b"").status == 401
    # unknown things: 404
    assert served.get("/voices/nosuch").status == 404
    assert served.get("/voices/nosuch/report").status == 404
    assert served.get("/voices/trainme/report").status == 404
    assert served.get("/voices/prepared/clips/prepared_0999/audio").status == 404
    assert served.get("/no/such/endpoint").json() == {"error": "no such endpoint (see /docs)", "status": 404}
    assert served.post("/voices/nosuch/train", b"", **served.auth()).status == 404
    assert served.get("/status", Host="attacker.example").status == 400  # DNS rebinding
    # path traversal in voice and clip names
    assert served.get("/voices/..").status == 400
    assert served.get("/voices/..%2F..%2Fetc").status == 404
    assert served.get("/voices/prepared/clips/..%2F..%2Fmetadata.csv/audio").status == 404
    assert served.get("/voices/prepared/clips/..prepared_0001/audio").status == 400
    assert served.get("/voices/prepared/clips/.hidden/audio").status == 400
    assert served.post("/inbox/%2E%2E?filename=a.mp3", b"data", **served.auth()).status == 400
    assert served.post("/inbox/x?filename=..%2Fescape.mp3", b"data", **served.auth()).status == 400
    assert served.post("/inbox/x?filename=.hidden.mp3", b"data", **served.auth()).status == 400
    # bad parameters
    assert served.get("/voices/prepared/clips?limit=0").status == 400
    assert served.get("/voices/prepared/clips?offset=-1").status == 400
    assert served.get("/voices/prepared/clips?order=random").status == 400
    assert served.get("/voices/prepared/clips?limit=ten").status == 400
    # wrong content types, names, bodies
    r = served.post("/inbox/x?filename=a.mp3", b"{}", **served.auth(**{"Content-Type": "application/json"}))
    assert r.status == 415
    assert served.post("/inbox/x?filename=notes.txt", b"data", **served.auth()).status == 415
    assert served.post("/inbox/x", b"data", **served.auth()).status == 400  # no file name
    assert served.post("/inbox/x?filename=a.mp3", b"", **served.auth()).status == 400  # empty
    r = served.post("/inbox/x", b"data", **served.auth(**{"Content-Type": "multipart/form-data"}))
    assert r.status == 400 and "boundary" in r.json()["error"]
    body, ctype = multipart("a.mp3", b"data", field="other")
    assert served.post("/inbox/x", body, **served.auth(**{"Content-Type": ctype})).status == 400
    body, ctype = multipart("a.mp3", b"data", close=False)
    r = served.post("/inbox/x", body, **served.auth(**{"Content-Type": ctype}))
    assert r.status == 400 and "truncated" in r.json()["error"]
    body, ctype = multipart("../../a.mp3", b"data")
    assert served.post("/inbox/x", body, **served.auth(**{"Content-Type": ctype})).status == 400
    # bad JSON
    for body_, ctype_, want in ((b"{bad", "application/json", 400), (b"[]", "application/json", 400),
                                (b'{"epochs": 3}', "application/json", 400), (b"hello", "text/plain", 415)):
        r = served.post("/voices/trainme/train", body_, **served.auth(**{"Content-Type": ctype_}))
        assert r.status == want, (body_, r.body)
    # too large: refused from the declared length before any byte is read
    too_big = int(LIMIT_MB * 2**20) + 1
    s = raw_request(served.port, f"POST /inbox/big?filename=big.mp3 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 f"Authorization: Bearer {served.token}\r\nContent-Length: {too_big}\r\n")
    assert read_status(s) == 413
    # too large without a declared length (chunked): refused once the limit is passed (or the connection reset)
    s = raw_request(served.port, f"POST /inbox/big?filename=big2.mp3 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 f"Authorization: Bearer {served.token}\r\nTransfer-Encoding: chunked\r\n")
    chunk = os.urandom(64 * 1024)
    try:
        for _ in range(int(LIMIT_MB * 16) + 2):
            s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
    except OSError:
        pass
    assert read_status(s) in (413, None)
    # a client that stalls mid-body: 408
    s = raw_request(served.port, f"POST /inbox/slow?filename=slow.mp3 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 f"Authorization: Bearer {served.token}\r\nContent-Length: 1000\r\n", b"x" * 10)
    assert read_status(s) == 408
    # a client that disconnects mid-body
    s = raw_request(served.port, f"POST /inbox/cut?filename=cut.mp3 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 f"Authorization: Bearer {served.token}\r\nContent-Length: 100000\r\n", b"x" * 5000)
    s.close()
    # none of them left a file, visible or hidden (the server removes its temporaries)
    assert wait_for(lambda: not hidden_files(inbox), timeout=30), hidden_files(inbox)
    assert visible_files(inbox) == []
    assert not list(served.root.rglob("escape.mp3")) and not list(served.root.parent.rglob("escape.mp3"))
    assert served.proc.poll() is None
    assert served.get("/status").status == 200


# ------------------------------------------------------------------------------------------------ uploads
def test_uploaded_mp3_ends_in_the_dataset(served: Served, recordings: list[Path]) -> None:
    body, ctype = multipart("talk 0.mp3", recordings[0].read_bytes())
    r = served.post("/inbox/uploaded", body, **served.auth(**{"Content-Type": ctype}))
    assert r.status == 201, r.body
    reply = r.json()
    assert reply["name"] == "talk 0.mp3" and reply["bytes"] == recordings[0].stat().st_size
    # the same name again, as a raw body: kept beside it under another name, never over it
    r = served.post("/inbox/uploaded?filename=talk%200.mp3", recordings[0].read_bytes(),
                    **served.auth(**{"Content-Type": "audio/mpeg"}))
    assert r.status == 201 and r.json()["name"] in ("talk 0.1.mp3", "talk 0.mp3")
    dataset = served.root / "dataset" / "uploaded" / "metadata.csv"
    assert wait_for(lambda: dataset.exists() and not visible_files(served.root / "inbox")
                    and not any((served.root / "spool").rglob("*.json")), timeout=300), served.log.read_text()[-3000:]
    rows = [r for r in metadata_rows(served.root) if r[0].endswith(".wav") and r[3] == "uploaded"]
    assert rows
    clips = served.get("/voices/uploaded/clips?status=accepted&limit=500").json()
    assert clips["total"] == len(rows)
    audio = served.get(clips["clips"][0]["audio"])
    assert audio.status == 200 and audio.body[:4] == b"RIFF"
    jobs = [json.loads(p.read_text()) for p in (served.root / "checkpoints").glob("*.json")]
    assert sum(1 for j in jobs if j.get("voice") == "uploaded") == 1  # the second upload: a duplicate


def test_fifty_concurrent_uploads_and_status_polls_exactly_once(served: Served, recordings: list[Path]) -> None:
    names = [f"burst {i:02d}.mp3" for i in range(50)]
    payloads = {n: os.urandom(2048 + i) for i, n in enumerate(names)}
    payloads[names[7]] = recordings[1].read_bytes()  # one real recording: the pipeline works meanwhile
    replies: dict[str, Any] = {}
    polls: list[int] = []
    done = threading.Event()

    def upload(name: str) -> None:
        if names.index(name) % 2:
            body, ctype = multipart(name, payloads[name])
            r = served.post("/inbox/burst", body, **served.auth(**{"Content-Type": ctype}))
        else:
            r = served.post(f"/inbox/burst?filename={name.replace(' ', '%20')}", payloads[name], **served.auth())
        replies[name] = (r.status, r.json())

    def poll() -> None:
        while not done.is_set():
            polls.append(served.get("/status").status)

    pollers = [threading.Thread(target=poll) for _ in range(3)]
    uploaders = [threading.Thread(target=upload, args=(n,)) for n in names]
    for t in pollers + uploaders:
        t.start()
    for t in uploaders:
        t.join()
    done.set()
    for t in pollers:
        t.join()
    assert all(status == 201 and body["name"] == name for name, (status, body) in replies.items()), replies
    assert len(replies) == 50 and polls and set(polls) == {200}

    def settled() -> bool:
        return not visible_files(served.root / "inbox") and not any((served.root / "spool").rglob("*.json"))

    assert wait_for(settled, timeout=300), served.log.read_text()[-3000:]
    failed = [json.loads(p.read_text()) for p in (served.root / "failed").glob("burst*.error.json")]
    jobs = [json.loads(p.read_text()) for p in (served.root / "checkpoints").glob("*.json")]
    burst_jobs = [j for j in jobs if j.get("voice") == "burst"]
    outcomes = sorted([f["files"][0]["name"] for f in failed]
                      + [str(j.get("source", {}).get("name")) for j in burst_jobs if not j.get("failed")])
    assert outcomes == sorted(names)  # each upload once: quarantined (not audio) or a job, never lost or doubled
    assert [j["source"]["name"] for j in burst_jobs if not j.get("failed")] == [names[7]]


def test_train_request_reaches_the_daemons_trainer(served: Served) -> None:
    r = served.post("/voices/trainme/train", b"{}", **served.auth(**{"Content-Type": "application/json"}))
    assert r.status == 202 and r.json()["requested"] is True
    assert (served.root / "training" / "trainme" / "train.request.json").exists()
    # training is disabled in this config and the voice is far below min_clips: only the request starts it (and
    # its base checkpoint does not exist, so the run stops at once instead of training on this shared CPU)
    assert wait_for(lambda: any(e.get("event") == "training starts" and e.get("voice") == "trainme"
                                for e in log_events(served.log)), timeout=120)
    assert served.get("/voices/trainme").json()["train_requested"] is True
    assert served.post("/voices/trainme/train", b"", **served.auth()).status == 202  # again: still one request


# ------------------------------------------------------------------------------------------------ process
def start_socket_activated(config: Path, log: Path, listener: socket.socket) -> subprocess.Popen[bytes]:
    """The daemon started as systemd starts it from deploy/ttsft-daemon.socket: the listening socket as fd 3,
    LISTEN_PID (its own pid) and LISTEN_FDS=1."""
    cmd = ["sh", "-c", 'LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"', sys.executable, "-m", "ttsft_daemon", "run",
           "--config", str(config)]
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS")}
    fd = listener.fileno()
    with open(log, "ab") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(REPO),
                                env={**env, "PYTHONUNBUFFERED": "1"}, close_fds=False,
                                preexec_fn=lambda: os.dup2(fd, 3))


def test_kill_9_mid_upload_leaves_no_partial_file(tmp_path: Path) -> None:
    """The first daemon gets its socket from "systemd" (socket activation: api.listen names another port and is
    not used); it is killed mid-upload. The second binds api.listen itself and removes the dead upload's
    temporary."""
    root = tmp_path / "state"
    token, token_file = _token(tmp_path)
    cfg = _api_config(tmp_path, root, free_port(), token_file)
    log = tmp_path / "daemon.log"
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    proc = start_socket_activated(cfg, log, listener)
    listener.close()  # the daemon holds its copy
    try:
        assert wait_for(lambda: _api_up(port) or proc.poll() is not None, timeout=120), log.read_text()[-3000:]
        size = int(LIMIT_MB * 2**20) - 1000
        s = raw_request(port, f"POST /inbox/k9?filename=partial.mp3 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              f"Authorization: Bearer {token}\r\nContent-Length: {size}\r\n", os.urandom(size // 3))
        folder = root / "inbox" / "k9"
        assert wait_for(lambda: folder.exists() and any(p.stat().st_size > 0 for p in folder.iterdir()), timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        s.close()
    finally:
        _stop(proc)
    assert visible_files(root / "inbox") == []
    assert hidden_files(root / "inbox")  # the temporary of the dead process, invisible to the daemon
    # the next start removes it and takes nothing from it
    assert run_daemon(cfg, log, timeout=300) == 0, log.read_text()[-3000:]
    assert hidden_files(root / "inbox") == [] and visible_files(root / "inbox") == []
    assert not (root / "failed").exists() or not list((root / "failed").iterdir())
    events = log_events(log)
    listening = [e for e in events if e.get("event") == "API listening"]
    assert listening[0]["socket"] == "from systemd (socket activation)" and str(port) in listening[0]["url"]
    assert listening[1]["socket"] == "bound by the daemon"


# ------------------------------------------------------------------------------------------------ in-process
def test_writes_refused_without_token_file_and_port_in_use(tmp_path: Path) -> None:
    port = free_port()
    config = config_from_dict({"paths": {"root": str(tmp_path / "state")},
                               "api": {"enabled": True, "listen": f"127.0.0.1:{port}"},
                               "logging": {"format": "json", "journal": "off"}})
    daemon = Daemon(config)
    daemon.spool.layout.ensure()
    daemon.start_api()
    try:
        r = call(port, "POST", "/inbox/v?filename=a.mp3", b"data", {"Authorization": "Bearer whatever-token-x"})
        assert r.status == 403 and "api.token_file" in r.json()["error"]
        assert call(port, "POST", "/voices/v/train", b"").status == 403
        assert call(port, "GET", "/status").json()["stages"]["inbox"] == 0
        from ttsft_daemon.api.server import ApiServer

        second = ApiServer(daemon)
        assert second.start() is False  # the port is taken: logged, the daemon goes on
        second.stop()
    finally:
        daemon.stop_api()
    assert not _api_up(port)
    assert visible_files(tmp_path / "state" / "inbox") == []
