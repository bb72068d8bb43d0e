"""The project's exception types. All subclass :class:`ValueError` so callers can catch broadly."""

from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """``'Type: first line of the message'`` (at most ``limit`` characters of it): how a library's
    exception is named inside one of our one-line errors."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit] if text else ''}"


class ResNetSpecError(ValueError):
    """Any error caused by user input: a spec, a weight file, an option. Printed without traceback."""


class SpecError(ResNetSpecError):
    """A problem located in a spec file: prints as ``file:line:col: message``."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 col: int | None = None, path: tuple = ()):  # noqa: D107
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        self.path = tuple(path)
        super().__init__(str(self))

    def __reduce__(self):
        # Errors cross process boundaries (convert and parity run frameworks in workers); the default
        # reduction would rebuild from str(self) alone and lose file/line/col/path.
        return (type(self), (self.message, self.file, self.line, self.col, self.path))

    def __str__(self) -> str:
        where = self.file or "<spec>"
        if self.line is not None:
            where += f":{self.line}:{self.col or 1}"
        return f"{where}: {self.message}"


class WeightsError(ResNetSpecError):
    """A problem with a weight set; the message names the tensor."""


class BackendUnavailable(ResNetSpecError):
    """A framework or device that the request needs is not installed or not present."""
