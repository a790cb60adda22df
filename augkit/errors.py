"""User-facing errors: one place that knows how augkit fails.

Every error a user can cause derives from :class:`AugkitError` and carries the exit
code the CLI returns. Library users catch them like any exception.

Every class here pickles (``__reduce__`` rebuilds it from its own fields): errors cross
process boundaries (augment's worker pool, DataLoader workers, Ray), and an exception that
cannot be unpickled there hangs or kills the parent instead of naming the file.
"""

from __future__ import annotations

#: Exit codes, documented in the README.
EXIT_OK = 0
EXIT_FAILED = 1  # a run could not finish (I/O failure, disk full, ...)
EXIT_USAGE = 2  # bad recipe, bad option, bad input layout: nothing was done
EXIT_SKIPPED = 3  # the run finished but some inputs were skipped (listed in the errors file)


class AugkitError(Exception):
    """An error the user can fix; the CLI prints it without a traceback."""

    exit_code = EXIT_FAILED


class UsageError(AugkitError):
    """Bad options or inputs, found before any work started."""

    exit_code = EXIT_USAGE


class RecipeError(UsageError):
    """A recipe that is not valid. ``where`` says which step/key, ``line`` the YAML line."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        where: str | None = None,
        line: int | None = None,
        allowed: str | None = None,
    ):
        self.message = message
        self.source, self.where, self.line, self.allowed = source, where, line, allowed
        parts = []
        loc = source or "recipe"
        if line is not None:
            loc += f":{line}"
        parts.append(loc)
        if where:
            parts.append(where)
        text = ": ".join(parts) + f": {message}"
        if allowed:
            text += f" (allowed: {allowed})"
        super().__init__(text)

    def __reduce__(self):
        kwargs = {"source": self.source, "where": self.where, "line": self.line, "allowed": self.allowed}
        return (_rebuild, (type(self), (self.message,), kwargs), self.__dict__)


class ImageError(AugkitError):
    """An input image that cannot be used; ``reason`` is a short machine-readable tag."""

    def __init__(self, path, reason: str, detail: str = ""):
        self.path, self.reason, self.detail = str(path), reason, detail
        super().__init__(f"{path}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):
        return (_rebuild, (type(self), (self.path, self.reason, self.detail), {}), self.__dict__)


def _rebuild(cls: type, args: tuple, kwargs: dict) -> Exception:
    """Unpickle an error through its own ``__init__`` (plain ``Exception`` pickling passes only
    the formatted message, which the classes above cannot be rebuilt from)."""
    return cls(*args, **kwargs)
