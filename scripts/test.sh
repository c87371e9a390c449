#!/usr/bin/env bash
# The project's checks: lint, types, then every test (unit and the real end-to-end ones).
# pytest's "no tests collected" (exit 5) counts as a failure here, never as a pass.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONDONTWRITEBYTECODE=1 TF_CPP_MIN_LOG_LEVEL=2
status=0
echo "== ruff"; .venv/bin/ruff check ttsft_daemon tests bench scripts || status=1
echo "== mypy"; .venv/bin/mypy || status=1
echo "== pytest"
.venv/bin/python -m pytest -p no:cacheprovider --timeout=1800 --durations=15 "$@"
rc=$?
if [ "$rc" = 5 ]; then echo "pytest collected no tests: failing" >&2; rc=1; fi
[ "$rc" = 0 ] || status=1
exit $status
