"""`ttsft-daemon report` and `ttsft-daemon review` (parsers and handlers; cli.py registers them)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ttsft_daemon.config import load_config


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rp = sub.add_parser("report", help="write training/<voice>/report.html (dataset, exports to listen to, losses)")
    rp.add_argument("--config", required=True, type=Path)
    rp.add_argument("--voice", default=None, help="voice (default: every voice with a dataset)")

    rv = sub.add_parser(
        "review", help="list a voice's clips to check; reject a clip or correct its transcript",
        description="Hand review of a voice's clips. Edits are atomic, locked against the running daemon, and kept "
                    "in dataset/<voice>/review.json: a rejected clip never comes back, the next training run uses "
                    "the corrected dataset.")
    rv.add_argument("--config", required=True, type=Path)
    rv.add_argument("--voice", required=True)
    _list_options(rv)
    actions = rv.add_subparsers(dest="action", metavar="ACTION")
    _list_options(actions.add_parser("list", help="list clips (the default)"), after_action=True)
    rj = actions.add_parser("reject", help="take a clip out of the dataset for good")
    rj.add_argument("clip", help="clip id or file name (as `review list` shows)")
    rj.add_argument("--reason", dest="reject_reason", default="", help="why (kept in review.json and failed/)")
    rl = actions.add_parser("relabel", help="replace a clip's transcript")
    rl.add_argument("clip")
    rl.add_argument("text", help="the correct transcript (quote it)")


def _list_options(parser: argparse.ArgumentParser, after_action: bool = False) -> None:
    """The listing options, taken before or after `list` (after it, they only override what was given)."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if after_action else value

    parser.add_argument("--worst", action="store_true", default=default(False),
                        help="lowest quality first (the default order)")
    parser.add_argument("--order", default=default(None),
                        choices=["worst", "disagreement", "quality", "name", "duration"])
    parser.add_argument("--reason", dest="reason_filter", default=default(None),
                        help="list the rejected clips with this reason (e.g. speaking_rate_high, 'rejected by hand')")
    parser.add_argument("--speaker", default=default(None), help="only clips of this speaker")
    parser.add_argument("--limit", type=int, default=default(20), help="clips listed (0: all; default 20)")
    parser.add_argument("--json", action="store_true", default=default(False), help="list as JSON lines")


def cmd_report(args: argparse.Namespace) -> int:
    from ttsft_daemon.console import Progress
    from ttsft_daemon.core.spool import Layout
    from ttsft_daemon.report import write_report
    from ttsft_daemon.training.scheduler import voices

    config = load_config(args.config)
    root = config.paths.root
    names = [args.voice] if args.voice else voices(Layout(root))
    if not names:
        print(f"no dataset yet under {root / 'dataset'}: nothing to report", file=sys.stderr)
        return 1
    for name in names:
        if not (root / "dataset" / name).is_dir() and not (root / "training" / name).is_dir():
            print(f"voice '{name}' has neither a dataset nor a training folder under {root}", file=sys.stderr)
            return 1
        bar = Progress(f"report {name}")
        path = write_report(root, name, args.config.resolve(), progress=bar.step)
        bar.close()
        print(f"{name}: {path}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from ttsft_daemon.report import review

    config = load_config(args.config)
    root = config.paths.root
    try:
        if args.action == "reject":
            result = review.reject(root, args.voice, args.clip, args.reject_reason)
        elif args.action == "relabel":
            result = review.relabel(root, args.voice, args.clip, args.text,
                                    language=config.transcription.language)
        else:
            order = args.order or "worst"
            clips = review.list_clips(root, args.voice, order=order, reason=args.reason_filter,
                                      speaker=args.speaker, limit=args.limit or None)
            for c in clips:
                if args.json:
                    print(json.dumps(c.to_dict(), ensure_ascii=False))
                    continue
                extra = f" [{', '.join(c.reasons)}]" if c.reasons else ""
                quality = "-" if c.quality is None else f"{c.quality:.3f}"
                doubt = "-" if c.disagreement is None else f"{c.disagreement:.0%}"
                print(f"{c.clip}  {c.duration:5.1f}s  quality {quality}  unsure {doubt}  {c.status}{extra}\n"
                      f"    {c.transcript}")
            if not clips and not args.json:
                print("no clip matches")
            return 0
    except review.ReviewError as exc:
        print(f"ttsft-daemon review: {exc}", file=sys.stderr)
        return 1
    print(f"{result.clip}: {result.action} ({result.detail})")
    return 0
