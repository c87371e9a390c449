"""Write config.example.yaml from the config dataclasses (every key, its default and its documentation)."""

from __future__ import annotations

import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any

import yaml

from ttsft_daemon.config import Config

HEADER = """\
# ttsft-daemon configuration. Every key is shown with its default; delete what you do not change.
# Relative paths resolve against this file's folder. Unknown keys are an error that names the key.
# Check a file with: ttsft-daemon check-config FILE
"""

OVERRIDES = {"paths.root": "./state"}  # the example runs from a checkout; deploy/config.yaml is the service's


def _value(v: Any) -> str:
    if isinstance(v, Path):
        v = str(v)
    text = yaml.safe_dump(v, default_flow_style=True, width=1000).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _limits(meta: typing.Mapping[str, Any]) -> str:
    parts = []
    if "choices" in meta:
        parts.append("one of " + ", ".join(str(c) for c in meta["choices"]))
    if "min" in meta:
        parts.append(f">= {meta['min']}")
    if "max" in meta:
        parts.append(f"<= {meta['max']}")
    return f" [{'; '.join(parts)}]" if parts else ""


def render(cls: type[Any] = Config, indent: int = 0, prefix: str = "") -> list[str]:
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        pad = "  " * indent
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            if indent == 0:
                lines.append("")
            lines.append(f"{pad}# {f.metadata.get('doc', '')}")
            lines.append(f"{pad}{f.name}:")
            lines += render(typing.cast(type[Any], tp), indent + 1, key + ".")
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        shown = OVERRIDES.get(key, default)
        lines.append(f"{pad}# {f.metadata.get('doc', '')}{_limits(f.metadata)}")
        lines.append(f"{pad}{f.name}: {_value(shown)}")
    return lines


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("config.example.yaml")
    out.write_text(HEADER + "\n".join(render()).lstrip("\n") + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
