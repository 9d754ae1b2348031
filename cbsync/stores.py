"""Shared stores: how a breaker shares its state with other processes.

A *store* is any object with a ``bind(handle)`` method, such as
``cbsync.integrations.redis.RedisStore``.  A breaker given ``store=`` (or
created by a ``Registry(store=...)``) calls ``store.bind(handle)`` once, at
the end of its constructor, with a :class:`BreakerHandle` -- the narrow view
of the breaker a store may use -- and keeps the :class:`StoreBinding` it
returns.  ``bind`` must do no I/O.  docs/stores.md walks through writing one.

The breaker then calls its binding at fixed points, and the rules are what
keep a shared breaker as cheap as a local one:

* A CLOSED call never reaches the binding on its lock-free path, and on its
  locked path only through :meth:`StoreBinding.judged_counts`, which must
  not do I/O: counts travel to the store in the background.
* Every method documented "lock held" runs with the breaker's lock held and
  must not do I/O, block or call back into the breaker (except the
  :class:`BreakerHandle` methods also documented "lock held").
* :meth:`StoreBinding.request_trial` is the only call made from a caller's
  thread that may do I/O, without the lock: admitting a trial call in
  HALF_OPEN (or when an OPEN period has elapsed) is a fleet-wide decision.
* A binding changes the breaker's state only through
  :meth:`BreakerHandle.synchronise`, which takes the lock, runs ``update()``
  (lock held) and adopts the :class:`RemoteState` it returns, if any.

A binding must never raise into a call: every method is expected to handle
its own errors.  The base :class:`StoreBinding` does nothing; a breaker
without a store behaves exactly like one bound to it.
"""

from typing import Callable, NamedTuple, Optional, Protocol, Tuple

from ._config import CircuitBreakerConfig
from ._errors import ConfigError
from ._state import State, TransitionReason

__all__ = [
    "BreakerHandle",
    "LocalTransition",
    "RemoteState",
    "Store",
    "StoreBinding",
    "Totals",
    "TrialVerdict",
]


class Totals(NamedTuple):
    """A breaker's counts since creation or its last reset.

    ``calls`` are successes and failures (ignored calls are not calls);
    ``consecutive`` is the current streak of failures.
    """

    calls: int
    failures: int
    slow: int
    consecutive: int


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
    reason: TransitionReason
    cause: TransitionReason
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
    cause: TransitionReason
    reason: TransitionReason
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


class BreakerHandle(Protocol):
    """The view of a breaker a store's binding may use.

    It holds the breaker weakly: a store never keeps a breaker alive.  Once
    the breaker is gone :attr:`alive` is ``False``, :meth:`synchronise`
    returns ``False`` and the other methods raise ``ReferenceError``.
    """

    @property
    def name(self) -> str:
        """The breaker's name."""

    @property
    def config(self) -> CircuitBreakerConfig:
        """The breaker's configuration."""

    @property
    def alive(self) -> bool:
        """Whether the breaker still exists."""

    @property
    def state(self) -> State:
        """The breaker's state now (no lock needed)."""

    @property
    def trial_calls(self) -> int:
        """Trial calls in flight in the current HALF_OPEN period (no lock needed)."""

    def now(self) -> float:
        """A reading of the breaker's clock (monotonic seconds)."""

    def totals(self) -> Totals:
        """The breaker's :class:`Totals` (lock held)."""

    def totals_at_fork(self) -> Totals:
        """The breaker's :class:`Totals`, read without its lock: only for
        fork hooks, where the child has a single thread and the lock may be
        a copy held by a thread of the parent."""

    def reason(self) -> Optional[TransitionReason]:
        """Why the breaker is in its state: the reason it opened, for OPEN and
        HALF_OPEN, the manual reason for FORCED_OPEN; ``None`` otherwise."""

    def open_period(self) -> float:
        """How long the breaker's next OPEN period lasts, backoff included (lock held)."""

    def describe(self, old: State, cause: TransitionReason) -> LocalTransition:
        """The breaker's current state as a transition from ``old`` (lock held)."""

    def synchronise(self, update: Callable[[], Optional[RemoteState]]) -> bool:
        """Take the breaker's lock, run ``update()`` and adopt the state it
        returns, if any; listeners are told after the lock is released.
        ``False`` (and ``update`` not run) if the breaker is gone."""


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

    def reconfigured(self, config: CircuitBreakerConfig) -> None:
        """The breaker's configuration changed (lock held).

        A breaker's configuration is fixed for its life, except under an
        emulated API that lets it change (``cbsync.compat.pybreaker``'s
        ``fail_max`` setter): a binding that copied settings from the old
        configuration takes them from ``config`` now.
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


class Store(Protocol):
    """What ``store=`` accepts: anything that binds a breaker to shared state."""

    def bind(self, breaker: BreakerHandle) -> StoreBinding:
        """Link a breaker to the store; called once by the breaker's
        constructor, must do no I/O."""


def check_store(store: object) -> None:
    """Raise :class:`~cbsync.ConfigError` unless ``store`` has a ``bind(breaker)`` method."""
    if not callable(getattr(store, "bind", None)):
        raise ConfigError(
            "store={!r} is not a store: give an object with a bind(breaker) method, such "
            "as cbsync.integrations.redis.RedisStore".format(store)
        )


def bind_store(store: object, handle: BreakerHandle) -> StoreBinding:
    """``store.bind(handle)``, checked; raises :class:`~cbsync.ConfigError` for a non-store."""
    check_store(store)
    binding = store.bind(handle)  # type: ignore[attr-defined]
    if not isinstance(binding, StoreBinding):
        raise ConfigError(
            "store={!r}: bind() returned {!r}, not a cbsync StoreBinding".format(store, binding)
        )
    return binding
