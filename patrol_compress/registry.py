"""Name -> object registries for plug-in points (datasets, criteria, attacks, ...).

A registry refuses duplicate names, and an unknown name raises an error that
lists the known names and the closest match, so a typo in a recipe is a
one-line fix for the user.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from patrol_compress.errors import PatrolError

T = TypeVar("T")


class RegistryError(PatrolError):
    """An unknown or duplicate name in a registry."""


class Registry(Generic[T]):
    """A named collection of plug-ins of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that adds ``obj`` under ``name``; duplicates are refused."""

        def deco(obj: T) -> T:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise RegistryError(f"{self.kind} '{name}' is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "(none)"
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} '{name}': expected one of {known}{hint}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
