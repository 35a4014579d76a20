"""The project's error hierarchy and the one way the command lines report errors.

Every error the project raises for input it cannot use (a config, a dataset, a checkpoint, a model
file, a catalog, a label batch) derives from :class:`BevStackError` and carries a message that names
the file, field or frame and what was expected. The command lines turn those errors, and the
operating system's (a full disk, a missing file, a permission), into one line on stderr and exit 1;
anything else is a bug and keeps its traceback.

Torch-free, so the edge runtime and ``perception bench`` can use it.
"""

from __future__ import annotations

import errno
import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

__all__ = ["BevStackError", "DatasetError", "ErrorReportingTyper", "one_line", "report_errors", "worker_message"]

F = TypeVar("F", bound=Callable[..., Any])


class BevStackError(ValueError):
    """Input the project cannot use; the message names the file, field or frame and what was expected."""


class DatasetError(BevStackError):
    """A dataset on disk is missing, malformed or inconsistent; the message names the file.

    Raised in a DataLoader worker process, it reaches the main process with its own message: torch
    re-raises it there as ``DatasetError(text)`` with ``text`` the worker's whole traceback, which
    :func:`worker_message` reduces to the original message again.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (worker_message(type(self), args[0]),)
        super().__init__(*args)


def worker_message(cls: type, text: str) -> str:
    """The message of an error of class ``cls`` raised in a torch DataLoader worker, from the text torch
    re-raises it with (a line "Caught C in DataLoader worker process 0.", then "Original Traceback ..."
    ending with the line "module.C: message"); any other text unchanged."""
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    head = f"{cls.__module__}.{cls.__qualname__}: "
    k = text.rfind(head)
    return text[k + len(head):].rstrip("\n") if k >= 0 else text


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line: a project error's own words, an OS error's file and reason."""
    if isinstance(exc, OSError) and not isinstance(exc, BevStackError):
        reason = exc.strerror or str(exc)
        if exc.errno == errno.ENOSPC:
            reason = "no space left on device (free some space and run the command again)"
        where = exc.filename if exc.filename is not None else ""
        text = f"{where}: {reason}" if where else reason
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def report_errors(func: F) -> F:
    """Wrap a command: project errors and OS errors become ``error: <one line>`` on stderr and exit 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (BevStackError, OSError) as exc:
            print(f"error: {one_line(exc)}", file=sys.stderr, flush=True)
            raise typer.Exit(code=1) from None
        except RecursionError:
            print("error: input nested too deeply to read", file=sys.stderr, flush=True)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


class ErrorReportingTyper(typer.Typer):
    """A ``typer.Typer`` whose every command reports errors through :func:`report_errors`."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        register = super().command(*args, **kwargs)

        def decorator(func: F) -> F:
            register(report_errors(func))
            return func

        return decorator
