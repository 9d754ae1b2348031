"""The interface between a breaker and a shared store (``store=``).

The core imports no store library.  A *store* is any object with a
``bind(breaker)`` method (such as ``cbsync.integrations.redis.RedisStore``);
a breaker given ``store=`` calls it once, at the end of its constructor, and
keeps the :class:`StoreBinding` it returns.  ``bind`` must do no I/O.

The breaker then calls its binding at fixed points, and the rules are what
keep a shared breaker as cheap as a local one:

* A CLOSED call never reaches the binding on its fast path, and on its locked
  path only through :meth:`StoreBinding.judged_counts`, which must not do I/O:
  counts travel to the store in the background.
* Every method documented "lock held" runs with the breaker's lock held and
  must not do I/O, block or call back into the breaker.
* :meth:`StoreBinding.request_trial` is the only call made from a caller's
  thread that may do I/O, without the lock: admitting a trial call in
  HALF_OPEN (or when an OPEN period has elapsed) is a fleet-wide decision.
* A binding changes the breaker's state only through
  ``breaker._synchronise(update)``, which takes the lock, runs ``update()``
  (lock held) and adopts the :class:`RemoteState` it returns, if any.

What a binding must never do is raise into a call: every method here is
expected to handle its own errors (the base class does nothing and is what a
breaker without a store behaves like).
"""

from typing import TYPE_CHECKING, NamedTuple, Optional, Tuple

from ._errors import ConfigError
from ._state import OpenReason, State

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker


class RemoteState(NamedTuple):
    """The fleet's view of one breaker, as a store read it.

    ``reason`` is why the fleet is in ``state`` (for OPEN and HALF_OPEN, why
    it opened); ``cause`` is the reason of the fleet's last transition.
    ``mine`` tells whether this process performed that transition (when it
    did not, the breaker reports kind ``"remote"``, or ``"manual"`` for
    FORCED_OPEN).  ``remaining`` is what is left of an OPEN period, measured
    on the store's clock.  ``version`` is the store's own ordering token.
    """

    state: State
    reason: OpenReason
    cause: OpenReason
    remaining: Optional[float]
    reopen_count: int
    mine: bool
    version: Tuple[str, int]


class LocalTransition(NamedTuple):
    """A state change this breaker made by itself, for the store to publish.

    ``reason`` is the new state's own reason (why it opened, for OPEN and
    HALF_OPEN; the manual reason for FORCED_OPEN), ``until`` the end of an
    OPEN period on the breaker's clock.  ``old`` equals ``new`` for a reset of
    a breaker that was already CLOSED here (a reset is for the whole fleet).
    """

    old: State
    new: State
    cause: OpenReason
    reason: OpenReason
    until: Optional[float]
    reopen_count: int


class TrialVerdict(NamedTuple):
    """The store's answer to :meth:`StoreBinding.request_trial`.

    ``remote`` is ``None`` when the store refused without asking anyone (all
    trial permits were taken a moment ago); ``lease`` names the permit when
    ``granted``.
    """

    granted: bool
    remote: Optional[RemoteState]
    lease: str


class StoreBinding:
    """One breaker's link to a store.  The base class keeps everything local."""

    #: True while the store answers for the fleet (reachable and synchronised);
    #: read without the lock, so it is a plain attribute.
    shared = False

    def judged_counts(
        self, calls: int, failures: int, slow: int, consecutive: int
    ) -> Tuple[int, int, int, int]:
        """The counts a CLOSED breaker judges, given its local ones (lock held)."""
        return calls, failures, slow, consecutive

    def changed(self, transition: LocalTransition) -> None:
        """The breaker changed state by itself (lock held).

        Also called for a ``trip()`` of a breaker already FORCED_OPEN (``old``
        and ``new`` both FORCED_OPEN: the trip, maybe its new reason, is for
        the fleet).  DISABLED is local: a move to it is not for the fleet, and
        a move from it to CLOSED (``reset()`` of a disabled breaker) means
        "rejoin the fleet", whose state the breaker then adopts.  Any change
        ends the current HALF_OPEN period: the trial permits of its calls
        still running are to be given back now, since :meth:`trial_ended` is
        only called for calls of the current period.
        """

    def trial_ended(self, success: bool) -> None:
        """A trial call admitted in the current HALF_OPEN period ended (lock held).

        Never called for a call whose period ended while it ran (see :meth:`changed`).
        """

    def forked(self) -> None:
        """The breaker is being rebuilt in a forked child (no lock held; no I/O).

        Runs before the child's first locked operation on the breaker (right
        after ``os.fork()``, or lazily where no at-fork hook runs): what the
        breaker counts from here on is the child's.
        """

    def request_trial(self) -> Optional[TrialVerdict]:
        """Ask the fleet for a trial permit (no lock; may do I/O).

        ``None`` means "decide locally" (the store cannot answer).
        """
        return None

    def accept_remote(self, remote: RemoteState) -> bool:
        """Whether ``remote`` is news the breaker should adopt (lock held)."""
        return False

    def trial_settled(self, verdict: TrialVerdict, taken: bool) -> None:
        """A granted permit was taken by a call, or not (lock held)."""


def check_store(store: object) -> None:
    """Raise :class:`ConfigError` unless ``store`` has a ``bind(breaker)`` method."""
    if not callable(getattr(store, "bind", None)):
        raise ConfigError(
            "store={!r} is not a store: give an object with a bind(breaker) method, such "
            "as cbsync.integrations.redis.RedisStore".format(store)
        )


def bind_store(store: object, breaker: "CircuitBreaker") -> StoreBinding:
    """``store.bind(breaker)``, checked; raises :class:`ConfigError` for a non-store."""
    check_store(store)
    binding = store.bind(breaker)  # type: ignore[attr-defined]
    if not isinstance(binding, StoreBinding):
        raise ConfigError(
            "store={!r}: bind() returned {!r}, not a cbsync StoreBinding".format(store, binding)
        )
    return binding
