"""Turn a nursery's ExceptionGroup back into the single error a caller can act on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import trio


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


@contextmanager
def single_error() -> Iterator[None]:
    """Re-raise a group's one real error bare; Cancelled siblings of it are noise.

    A group holding only Cancelled, or several real errors, is left as it is.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        real = [leaf for leaf in _leaves(group) if not isinstance(leaf, trio.Cancelled)]
        if len(real) == 1 and isinstance(real[0], Exception):
            raise real[0] from None
        raise
