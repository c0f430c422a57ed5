"""One small registry class, shared by backbones, heads, datasets and metrics.

Entries are registered next to their definition; lookups by exact name, listing by
glob pattern, and an unknown name fails with the closest registered names.
"""
from __future__ import annotations

import difflib
import fnmatch
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a name is not registered; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    """A named collection of entries of one kind (``"backbone"``, ``"head"``...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; registering a name twice is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def unregister(self, name: str) -> None:
        """Remove ``name`` (used by tests that register temporary entries)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        """The entry called ``name``; an unknown name raises with suggestions."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return (f"unknown {self.kind} {name!r}.{hint} "
                f"Run `zoo list {self.kind}s` to see all {len(self._entries)}.")

    def list(self, pattern: str = "*") -> list[str]:
        """Registered names matching the glob ``pattern``, in registration order."""
        return [name for name in self._entries if fnmatch.fnmatchcase(name, pattern)]

    def expand(self, patterns: list[str]) -> list[str]:
        """Names matching any of ``patterns``, without repeats; a pattern matching nothing raises."""
        names: list[str] = []
        for pattern in patterns:
            matched = self.list(pattern)
            if not matched:
                raise UnknownNameError(self.unknown_message(pattern))
            names.extend(n for n in matched if n not in names)
        return names

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def items(self):
        return self._entries.items()
