"""``@breaker``: the wrapt function wrapper a breaker decorates with.

wrapt binds methods, classmethods and staticmethods correctly and keeps
``__name__``, ``__doc__`` and ``inspect.signature``.  Its own ``__call__``
looks ``__self__`` up on a plain function at every call, raising and
clearing an AttributeError each time; a plain function needs no binding, so
it is called straight through the breaker.
"""

from typing import TYPE_CHECKING, Any, Callable, Protocol, Tuple

import wrapt


class Caller(Protocol):
    """What the wrapper needs of a breaker: ``call()``."""

    def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any: ...


if TYPE_CHECKING:
    _BoundFunctionWrapper = wrapt.BoundFunctionWrapper[Any, Any]
    _FunctionWrapper = wrapt.FunctionWrapper[Any, Any]
else:  # wrapt < 2 has no type parameters
    _BoundFunctionWrapper = wrapt.BoundFunctionWrapper
    _FunctionWrapper = wrapt.FunctionWrapper


class _BoundBreakerWrapper(_BoundFunctionWrapper):
    @property
    def breaker(self) -> Any:
        return self._self_parent._self_breaker


class BreakerFunctionWrapper(_FunctionWrapper):
    """What ``@breaker`` returns: wrapt's binding for methods, a direct call for
    functions; the breaker is reachable as ``.breaker``."""

    __bound_function_wrapper__ = _BoundBreakerWrapper

    def __init__(self, wrapped: Callable[..., Any], breaker: Caller) -> None:
        def wrapper(
            wrapped: Callable[..., Any], instance: object, args: Tuple[Any, ...], kwargs: Any
        ) -> Any:
            return breaker.call(wrapped, *args, **kwargs)

        super().__init__(wrapped, wrapper)
        self._self_breaker = breaker

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._self_breaker.call(self.__wrapped__, *args, **kwargs)

    @property
    def breaker(self) -> Any:
        """The breaker every call goes through."""
        return self._self_breaker
