"""Exception groups from nurseries, read back as the error a caller can act on.

One rule everywhere: a group's *real* errors are its leaves that are not ``trio.Cancelled`` (those are the
siblings torn down because one task failed). When exactly one real error is left, that is what happened.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


def leaves(exc: BaseException) -> list[BaseException]:
    """Every non-group exception inside ``exc`` (``[exc]`` when it is not a group), depth first."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def real_errors(exc: BaseException) -> list[BaseException]:
    return [leaf for leaf in leaves(exc) if not isinstance(leaf, trio.Cancelled)]


def root_cause(exc: BaseException) -> BaseException:
    """The one real error inside ``exc``, or ``exc`` itself when there is none or several."""
    real = real_errors(exc)
    return real[0] if len(real) == 1 else exc


@contextmanager
def single_error() -> Iterator[None]:
    """Re-raise a group's one real error bare; Cancelled siblings of it are noise.

    A group holding only Cancelled, or several real errors, is left as it is.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        real = real_errors(group)
        if len(real) == 1 and isinstance(real[0], Exception):
            raise real[0] from None
        raise
