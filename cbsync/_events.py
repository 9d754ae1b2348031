"""What happened to a breaker: outcomes, typed events, and their delivery.

A breaker collects events while it holds its lock and delivers them after
releasing it, in the order things happened.  Each event knows which listener
method it calls (:meth:`Event.send`), so delivery needs no method names.
Delivery is typed against :class:`Sink`, the shape of
:class:`cbsync.Listener`, so this module needs nothing from the breaker.
"""

import enum
import logging
from typing import TYPE_CHECKING, Any, Iterable, Optional, Protocol, Sequence

if TYPE_CHECKING:
    from ._errors import CircuitOpenError
    from ._state import State, TransitionReason

logger = logging.getLogger("cbsync")


class Outcome(enum.Enum):
    """How a finished call counts.

    * ``SUCCESS`` -- the dependency answered: it counts in the window and
      resets the consecutive-failure streak.
    * ``FAILURE`` -- the dependency failed: it counts in the window and the streak.
    * ``IGNORED`` -- neither (an exception matching ``ignore``): it changes no
      count but the ignored total.
    """

    SUCCESS = "success"
    FAILURE = "failure"
    IGNORED = "ignored"


class Sink(Protocol):
    """What events are delivered to: the methods of :class:`cbsync.Listener`."""

    def on_attach(self, breaker: Any) -> None: ...

    def on_success(self, breaker: Any, elapsed: float) -> None: ...

    def on_failure(self, breaker: Any, elapsed: float, exc: Optional[BaseException]) -> None: ...

    def on_ignored(self, breaker: Any, elapsed: float, exc: Optional[BaseException]) -> None: ...

    def on_rejected(self, breaker: Any, error: "CircuitOpenError") -> None: ...

    def on_state_change(
        self, breaker: Any, old: "State", new: "State", reason: "TransitionReason"
    ) -> None: ...


class StateObserver(Protocol):
    """An internal listener told of every state change, before the listeners
    (health checks use it to arm and disarm themselves)."""

    def state_changed(self) -> None: ...


class Event:
    """Something that happened to ``breaker``, for its listeners."""

    __slots__ = ("breaker",)
    #: The listener method this event calls, for log messages.
    method = ""

    def __init__(self, breaker: Any) -> None:
        self.breaker = breaker

    def send(self, sink: Sink) -> None:
        """Call the listener method of this event on ``sink``."""
        raise NotImplementedError


class Attached(Event):
    """The listener was added to ``breaker``."""

    __slots__ = ()
    method = "on_attach"

    def send(self, sink: Sink) -> None:
        sink.on_attach(self.breaker)


class Finished(Event):
    """A call ended after ``elapsed`` seconds; ``outcome`` says how it counts."""

    __slots__ = ("elapsed", "exc", "outcome")

    def __init__(
        self, breaker: Any, outcome: Outcome, elapsed: float, exc: Optional[BaseException]
    ) -> None:
        self.breaker = breaker
        self.outcome = outcome
        self.elapsed = elapsed
        self.exc = exc

    @property
    def method(self) -> str:  # type: ignore[override]
        return "on_" + self.outcome.value

    def send(self, sink: Sink) -> None:
        outcome = self.outcome
        if outcome is Outcome.SUCCESS:
            sink.on_success(self.breaker, self.elapsed)
        elif outcome is Outcome.FAILURE:
            sink.on_failure(self.breaker, self.elapsed, self.exc)
        else:
            sink.on_ignored(self.breaker, self.elapsed, self.exc)


class Rejected(Event):
    """A call was rejected with ``error``."""

    __slots__ = ("error",)
    method = "on_rejected"

    def __init__(self, breaker: Any, error: "CircuitOpenError") -> None:
        self.breaker = breaker
        self.error = error

    def send(self, sink: Sink) -> None:
        sink.on_rejected(self.breaker, self.error)


class StateChanged(Event):
    """The breaker moved from ``old`` to ``new`` for ``reason``."""

    __slots__ = ("new", "old", "reason")
    method = "on_state_change"

    def __init__(
        self, breaker: Any, old: "State", new: "State", reason: "TransitionReason"
    ) -> None:
        self.breaker = breaker
        self.old = old
        self.new = new
        self.reason = reason

    def send(self, sink: Sink) -> None:
        sink.on_state_change(self.breaker, self.old, self.new, self.reason)


def deliver(sinks: Sequence[Sink], events: Iterable[Event]) -> None:
    """Deliver ``events`` in order to every sink; log, never raise, what they raise."""
    for event in events:
        for sink in sinks:
            try:
                event.send(sink)
            except Exception:
                logger.exception(
                    "cbsync listener %r raised in %s; the call is not affected",
                    sink,
                    event.method,
                )


def notify_success(sinks: Sequence[Sink], breaker: Any, elapsed: float) -> None:
    """Deliver a success without building an event (the lock-free success path)."""
    for sink in sinks:
        try:
            sink.on_success(breaker, elapsed)
        except Exception:
            logger.exception(
                "cbsync listener %r raised in on_success; the call is not affected", sink
            )
