"""The one way the fast path changes piper: replacing an attribute of one of its modules or classes.

Each replacement remembers what it replaced, so `restore_all()` puts piper back (tests compare the two).
"""

from __future__ import annotations

_MISSING = object()
_originals: dict[tuple[int, str], tuple[object, str, object]] = {}


def replace(owner: object, name: str, value: object) -> None:
    """Set `owner.name` to `value` in this process (piper's files are never touched)."""
    current = getattr(owner, name, _MISSING)
    if current is _MISSING and name != "pin_memory":
        raise AttributeError(f"{owner!r} has no {name!r}: piper.train changed; the fast path needs updating")
    _originals.setdefault((id(owner), name), (owner, name, current))
    setattr(owner, name, value)


def restore_all() -> None:
    """Undo every `replace` of this process."""
    for owner, name, original in _originals.values():
        if original is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)
    _originals.clear()
