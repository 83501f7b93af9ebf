"""Asynchronous results, as tooz's ``CoordAsyncResult``: ``get(timeout=None)`` and ``done()``."""

from __future__ import annotations

import abc
import concurrent.futures
from typing import Any, Callable

from coordactors.compat.tooz.exceptions import OperationTimedOut, translate

__all__ = ["CoordAsyncResult", "CoordinatorResult", "ImmediateResult"]


class CoordAsyncResult(abc.ABC):
    """The result of an asynchronous call, as ``tooz.coordination.CoordAsyncResult``."""

    @abc.abstractmethod
    def get(self, timeout: float | None = None) -> Any:
        """Wait up to ``timeout`` seconds (None: for ever) and return the result.

        Raises the operation's tooz error, or OperationTimedOut when the wait
        runs out; the operation itself goes on (call ``get`` again).
        """

    @abc.abstractmethod
    def done(self) -> bool:
        """True once the result (or error) is in."""


class CoordinatorResult(CoordAsyncResult):
    """A ``concurrent.futures.Future`` of a coordactors reply, converted for tooz.

    ``convert`` turns the reply into tooz's value (member ids into bytes...);
    a coordactors error becomes the tooz one, naming ``group_id`` and
    ``member_id`` where tooz's does.
    """

    def __init__(
        self,
        future: concurrent.futures.Future[Any],
        convert: Callable[[Any], Any] | None = None,
        *,
        group_id: Any = None,
        member_id: Any = None,
    ) -> None:
        self._future = future
        self._convert = convert
        self._group_id = group_id
        self._member_id = member_id

    def get(self, timeout: float | None = None) -> Any:
        """See :meth:`CoordAsyncResult.get`."""
        try:
            value = self._future.result(timeout=timeout)
        except concurrent.futures.TimeoutError as exc:
            raise OperationTimedOut(f"no result within {timeout}s", cause=exc) from exc
        except BaseException as exc:
            translated = translate(exc, self._group_id, self._member_id)
            if translated is exc:
                raise
            raise translated from exc
        return self._convert(value) if self._convert is not None else value

    def done(self) -> bool:
        """See :meth:`CoordAsyncResult.done`."""
        return self._future.done()


class ImmediateResult(CoordAsyncResult):
    """A result known at once (an error raised when the call was made, or a local answer)."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self._value = value
        self._error = error

    def get(self, timeout: float | None = None) -> Any:
        """See :meth:`CoordAsyncResult.get`."""
        if self._error is not None:
            raise self._error
        return self._value

    def done(self) -> bool:
        """Always True."""
        return True
