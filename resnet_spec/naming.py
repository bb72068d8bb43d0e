"""Unique names for the helper nodes and layers a backend adds around the canonically named ones."""

from __future__ import annotations


class UniqueNames:
    """``take(base)`` returns ``base`` the first time, then ``base<sep>1``, ``base<sep>2``, ...

    Deterministic (first come, first named), so that generating twice gives identical names.
    """

    def __init__(self, sep: str = "_"):
        self.sep = sep
        self.used: set = set()

    def take(self, base: str) -> str:
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}{self.sep}{i}", i + 1
        self.used.add(name)
        return name
