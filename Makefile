# The README's two commands: `make demo` and `make test`. Both install what they need first.
.PHONY: install demo test test-fast test-slow lint clean

install:
	@bash scripts/install.sh

demo: install
	@.venv/bin/python -m ttsft_daemon.demo

test: install
	@bash scripts/test.sh

test-fast: install
	@.venv/bin/python -m pytest -m "not slow" -q

test-slow: install
	@.venv/bin/python -m pytest -m slow -q

lint: install
	@.venv/bin/ruff check ttsft_daemon tests bench && .venv/bin/mypy

clean:
	rm -rf demo-out build .pytest_cache .mypy_cache .ruff_cache
