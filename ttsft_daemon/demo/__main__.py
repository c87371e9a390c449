"""`make demo`: drop -> dataset -> trained voice -> spoken sample, on a bundled, realistic input.

It speaks sentences with the bundled Piper voice, lays them over a music bed with pauses between them,
saves one recording as mp3 and another as mp4 (with video), drops both into a fresh state root's inbox,
runs `ttsft-daemon run --exit-when-idle` (the real daemon, real Spleeter, Whisper and Piper training on a
small CPU setting), then speaks a sentence with the trained voice.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import wave
from pathlib import Path

from ttsft_daemon.config import PROJECT_DIR

DEMO_CONFIG = """\
# Demo config: small CPU settings so the whole loop runs in minutes. See config.example.yaml for every key.
paths:
  root: ./state
inbox:
  settle_seconds: 1
  rescan_seconds: 1
daemon:
  retry_backoff_seconds: 2
separation:
  enabled: {separation}
training:
  enabled: true
  min_clips: {min_clips}
  max_epochs: {epochs}
  quality: x_low
  batch_size: 4
  num_workers: 0
  accelerator: cpu
  keep_last: 1
  keep_best: 0
logging:
  format: console
"""


def make_inputs(folder: Path, seed: int) -> list[Path]:
    """Two recordings (mp3, and mp4 with video) in `folder`, their ground truth (texts, pauses) beside them."""
    from ttsft_daemon.demo.audio import SENTENCES, make_recording, write_ground_truth, write_media

    half = len(SENTENCES) // 2
    made = []
    for kind, texts, s in (("mp3", SENTENCES[:half], seed), ("mp4", SENTENCES[half:], seed + 1)):
        rec = make_recording(texts, pause_range=(0.6, 1.2), music_db=-12.0, seed=s, sr=44100)
        path = folder / f"demo talk {kind}.{kind}"
        write_media(rec, path, kind)
        write_ground_truth(rec, folder / f"ground-truth-{kind}.json")
        made.append(path)
    return made


def speak_sample(onnx: Path, text: str, out: Path) -> float:
    from piper import PiperVoice

    voice = PiperVoice.load(str(onnx))
    with wave.open(str(out), "wb") as w:
        voice.synthesize_wav(text, w)
    with wave.open(str(out), "rb") as r:
        return r.getnframes() / r.getframerate()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", type=Path, default=PROJECT_DIR / "demo-out")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--min-clips", type=int, default=20)
    p.add_argument("--no-separation", action="store_true", help="skip Spleeter (faster)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)

    out: Path = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    state = out / "state"
    (state / "inbox").mkdir(parents=True)
    config = out / "config.yaml"
    config.write_text(DEMO_CONFIG.format(separation="false" if args.no_separation else "true",
                                         min_clips=args.min_clips, epochs=args.epochs))
    started = time.monotonic()
    print(f"[demo] speaking sentences with the bundled Piper voice over music -> {state / 'inbox'}", flush=True)
    staging = out / "staging"
    staging.mkdir()
    for f in make_inputs(staging, args.seed):  # written elsewhere, then moved in: the inbox sees whole files
        f.rename(state / "inbox" / f.name)
    exe = Path(sys.executable).parent / "ttsft-daemon"
    cmd = [str(exe), "run", "--config", str(config), "--exit-when-idle"]
    print(f"[demo] running: {' '.join(cmd)}", flush=True)
    rc = subprocess.call(cmd)
    if rc != 0:
        print(f"[demo] the daemon exited with {rc}", file=sys.stderr)
        return rc
    status = subprocess.run([str(exe), "status", "--config", str(config), "--json"], capture_output=True, text=True)
    info = json.loads(status.stdout)
    voice = next(iter(info["voices"]), None)
    if voice is None:
        print("[demo] no dataset was built; see the log above", file=sys.stderr)
        return 1
    v = info["voices"][voice]
    onnx = state / "training" / voice / f"{voice}.onnx"
    print(f"\n[demo] dataset:     {state / 'dataset' / voice / 'metadata.csv'} ({v['clips']} clips, "
          f"{v['seconds'] / 60:.1f} min)")
    print(f"[demo] checkpoints: {state / 'training' / voice / 'checkpoints'} (epoch {v['training']['epoch']})")
    print(f"[demo] rejected:    {info['stages']['failed']} items in {state / 'failed'}")
    if not onnx.exists():
        print(f"[demo] no trained voice at {onnx}; see {state / 'training' / voice / 'train.log'}", file=sys.stderr)
        return 1
    sample = out / "sample.wav"
    seconds = speak_sample(onnx, "Hello! This voice was trained by ttsft daemon from a long recording.", sample)
    evals = state / "training" / voice / "evaluations.json"
    print(f"[demo] voice:       {onnx}")
    print(f"[demo] evaluation:  {evals}")
    print(f"[demo] spoken sample: {sample} ({seconds:.1f} s)")
    print(f"[demo] done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
