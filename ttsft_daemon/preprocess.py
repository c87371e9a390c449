"""`ttsft-daemon preprocess`: the data stages one-shot on a file or folder, without a running service.

The inputs are linked (or copied) into a fresh state root's inbox under OUTPUT and the same engine the daemon
uses runs until no work is left, with training off. The originals are never modified.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from ttsft_daemon.config import AUDIO_EXTENSIONS, Config, config_from_dict, load_config
from ttsft_daemon.core.inbox import voice_name
from ttsft_daemon.core.spool import Layout, read_json
from ttsft_daemon.errors import TtsftError


def _inputs(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink()
                      and p.suffix.lower().lstrip(".") in AUDIO_EXTENSIONS)
    raise TtsftError(f"input not found: {path} (give an audio/video file or a folder of them)")


def _place(src: Path, inbox: Path, index: int) -> None:
    dest = inbox / f"{index:04d}-{src.name}"
    if dest.exists():
        return
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def preprocess(input_path: Path, output: Path, config_path: Path | None, voice: str | None,
               enroll: Path | None = None) -> int:
    base = load_config(config_path) if config_path else config_from_dict({})
    files = _inputs(input_path)
    if not files:
        raise TtsftError(f"no audio or video files in {input_path} (extensions: {', '.join(AUDIO_EXTENSIONS)})")
    voice = voice_name(voice or base.inbox.default_voice)
    config = dataclasses.replace(
        base,
        paths=dataclasses.replace(base.paths, root=output.resolve()),
        inbox=dataclasses.replace(base.inbox, settle_seconds=0.0, rescan_seconds=1.0, default_voice=voice),
        training=dataclasses.replace(base.training, enabled=False),
    )
    layout = Layout(config.paths.root)
    layout.ensure()
    if enroll is not None:  # the target speaker's sample: taken by the speaker stage, never training data
        if not enroll.is_file():
            raise TtsftError(f"enrollment file not found: {enroll} (give 10 s or more of the target speaker alone)")
        ext = enroll.suffix.lower().lstrip(".")
        if ext not in AUDIO_EXTENSIONS:
            raise TtsftError(f"enrollment file {enroll} is not audio (extensions: {', '.join(AUDIO_EXTENSIONS)})")
        shutil.copyfile(enroll, layout.inbox / f"{config.speaker.enroll_name}.{ext}")
    for i, f in enumerate(files):
        _place(f, layout.inbox, i)
    from ttsft_daemon.daemon.service import Daemon
    from ttsft_daemon.logs import configure_logging

    tty = sys.stderr.isatty()
    configure_logging("warning" if tty else config.logging.level, config.logging.format, "off")
    daemon = Daemon(config, exit_when_idle=True)
    daemon.install_signal_handlers()
    started = time.monotonic()
    done = threading.Event()
    progress = threading.Thread(target=_progress, args=(config, len(files), done), daemon=True) if tty else None
    if progress:
        progress.start()
    code = daemon.run()
    done.set()
    if progress:
        progress.join(2)
    print(summarize(config, time.monotonic() - started))
    return code


def _progress(config: Config, n_files: int, done: threading.Event) -> None:
    from ttsft_daemon.status import collect

    while not done.wait(1.0):
        st = collect(config)["stages"]
        ahead = st["inbox"] + st["raw"] + st["vocals"]
        clips = sum(v["clips"] for v in collect(config)["voices"].values())
        bar_n = int(30 * (n_files - ahead) / max(1, n_files))
        sys.stderr.write(f"\r[{'#' * bar_n}{'.' * (30 - bar_n)}] recordings {n_files - ahead}/{n_files}  "
                         f"clips waiting {st['audio'] + st['transcribed']}  kept {clips}  rejected {st['failed']}  ")
        sys.stderr.flush()
    sys.stderr.write("\n")


def summarize(config: Config, elapsed: float) -> str:
    layout = Layout(config.paths.root)
    from ttsft_daemon.dataset import summary

    lines = [f"Output: {layout.root}"]
    kept = 0
    for d in sorted(p for p in layout.datasets.iterdir() if p.is_dir()):
        clips, seconds = summary(d)
        kept += clips
        lines.append(f"  dataset/{d.name}: {clips} clips kept, {seconds / 3600:.3f} h ({seconds / 60:.1f} min) "
                     f"-> {d / 'metadata.csv'}")
    reasons: Counter[str] = Counter()
    for err in layout.failed.glob("*.error.json"):
        rep = read_json(err) or {}
        detail = str(rep.get("detail", ""))
        if rep.get("reason") == "quality gate":
            for r in detail.split(" (")[0].split(", "):
                reasons[f"clip: {r}"] += 1
        else:
            reasons[f"{rep.get('stage')}: {rep.get('reason')}"] += 1
    lines.append(f"  rejected: {sum(reasons.values())}" + ("" if reasons else " (none)"))
    lines += [f"    {n:5d}  {r}" for r, n in reasons.most_common()]
    lines.append(f"  time: {elapsed:.1f} s")
    return "\n".join(lines)
