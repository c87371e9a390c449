"""The `ttsft-daemon` command line (the contract in DESIGN.md)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from ttsft_daemon import __version__
from ttsft_daemon.config import Config, load_config
from ttsft_daemon.errors import ConfigError, TtsftError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ttsft-daemon",
        description="Turn long recordings of a person into a Piper TTS voice, unattended.",
    )
    p.add_argument("--version", action="version", version=f"ttsft-daemon {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon in the foreground (systemd runs this)")
    run.add_argument("--config", required=True, type=Path, help="YAML config file")
    run.add_argument("--exit-when-idle", action="store_true",
                     help="process everything present (and train if due), then exit 0")

    st = sub.add_parser("status", help="counts per stage, dataset hours, training state")
    st.add_argument("--config", required=True, type=Path)
    st.add_argument("--json", action="store_true", help="print one JSON object")

    cc = sub.add_parser("check-config", help="validate a config file: exit 0, or 2 with the problems")
    cc.add_argument("file", type=Path)

    pp = sub.add_parser("preprocess", help="one-shot: audio/video files -> Piper dataset, no daemon")
    pp.add_argument("--input", required=True, type=Path, help="a file or a folder of files")
    pp.add_argument("--output", required=True, type=Path, help="output folder (a state root with dataset/)")
    pp.add_argument("--config", type=Path, help="YAML config (default: built-in defaults)")
    pp.add_argument("--voice", default=None, help="voice name (default: the config's inbox.default_voice)")
    pp.add_argument("--enroll", default=None, type=Path,
                    help="a clean sample (10 s or more) of the target speaker: only that person's clips are kept")

    tr = sub.add_parser("train", help="train or resume a voice now, whatever the threshold")
    tr.add_argument("--config", required=True, type=Path)
    tr.add_argument("--voice", default=None, help="voice to train (default: every voice with a dataset)")

    rt = sub.add_parser("retry", help="put quarantined recordings back into the inbox (all, or those named)")
    rt.add_argument("--config", required=True, type=Path)
    rt.add_argument("items", nargs="*", metavar="ITEM", help="report name, job id or file name (default: all)")

    from ttsft_daemon.report.commands import add_parsers

    add_parsers(sub)  # report, review
    return p


def _load(path: Path) -> Config:
    return load_config(path)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from ttsft_daemon.daemon.service import run_daemon
    from ttsft_daemon.logs import configure_logging

    configure_logging(config.logging.level, config.logging.format, config.logging.journal)
    return run_daemon(config, exit_when_idle=args.exit_when_idle)


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from ttsft_daemon.status import collect, render

    status = collect(config)
    print(json.dumps(status, indent=2, sort_keys=True) if args.json else render(status))
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.file)
    print(f"{args.file}: OK (state root {config.paths.root})")
    return 0


def cmd_preprocess(args: argparse.Namespace) -> int:
    from ttsft_daemon.preprocess import preprocess

    return preprocess(args.input, args.output, args.config, args.voice, args.enroll)


def cmd_train(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from ttsft_daemon.logs import configure_logging
    from ttsft_daemon.training.scheduler import train_now

    tty = sys.stderr.isatty()  # on a terminal a progress bar shows the epochs; the log keeps to warnings
    configure_logging("warning" if tty else config.logging.level, config.logging.format, config.logging.journal)
    return train_now(config, args.voice)


def cmd_report(args: argparse.Namespace) -> int:
    from ttsft_daemon.report.commands import cmd_report as run

    return run(args)


def cmd_review(args: argparse.Namespace) -> int:
    from ttsft_daemon.report.commands import cmd_review as run

    return run(args)


def cmd_retry(args: argparse.Namespace) -> int:
    from ttsft_daemon.core.retry import retry

    outcomes = retry(_load(args.config), list(args.items))
    for o in outcomes:
        print(f"{'retried' if o.retried else 'skipped'}: {o.report}: {o.message}")
    if not outcomes:
        print("nothing to retry: no recording in failed/ can go back to the inbox")
    return 0 if all(o.retried for o in outcomes) else 1


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run, "status": cmd_status, "check-config": cmd_check_config,
    "preprocess": cmd_preprocess, "train": cmd_train, "report": cmd_report, "review": cmd_review,
    "retry": cmd_retry,
}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(exc.explain(), file=sys.stderr)
        return 2
    except TtsftError as exc:
        print(f"ttsft-daemon {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("TTSFT_DEBUG"):
            raise
        print(f"ttsft-daemon {args.command} failed unexpectedly: {type(exc).__name__}: {exc}. "
              "Run again with TTSFT_DEBUG=1 for the full traceback, and report it if it persists.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
