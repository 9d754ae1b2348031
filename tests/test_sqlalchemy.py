"""The SQLAlchemy integration, on a SQLite file database and a real PostgreSQL behind a proxy."""

import contextlib
import doctest
import gc
import os
import pickle
import socket
import sqlite3
import threading

import pytest
import sqlalchemy
from sqlalchemy import event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import NullPool, QueuePool

import cbsync
from cbsync._registry import set_default_registry
from cbsync.integrations import sqlalchemy as cb_sqlalchemy
from cbsync.integrations.sqlalchemy import (
    DatabaseCircuitOpenError,
    DatabaseHalfOpenLimitReached,
    attach,
)

#: Seconds a test waits at most for a thread or a socket (never reached when all is well).
WAIT = 10.0
#: The OPEN period of the test breakers.
TIMEOUT = 30.0
POSTGRES_URL = os.environ.get(
    "CBSYNC_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def make_breaker(clock, **overrides):
    """A breaker on the test clock: two consecutive failures open it for TIMEOUT."""
    settings = {
        "failure_threshold": 2,
        "failure_rate_threshold": None,
        "timeout": TIMEOUT,
        "success_threshold": 1,
        "half_open_max_calls": 1,
    }
    settings.update(overrides)
    return cbsync.CircuitBreaker("db", clock=clock, **settings)


@contextlib.contextmanager
def listening(engine, identifier, listener):
    """``listener`` on ``engine``'s ``identifier`` event for the block."""
    event.listen(engine, identifier, listener)
    try:
        yield
    finally:
        event.remove(engine, identifier, listener)


def scalar(engine, sql="select 1"):
    """Run ``sql`` on a connection of ``engine`` and return the first column of the first row."""
    with engine.connect() as conn:
        return conn.execute(text(sql)).scalar()


def open_by_failures(breaker):
    """Open ``breaker`` (OPEN, not FORCED_OPEN) with failures recorded through the core."""
    for _ in range(breaker.config.failure_threshold):
        with pytest.raises(OSError):
            breaker.call(_raise_oserror)
    assert breaker.state is cbsync.State.OPEN


def _raise_oserror():
    raise OSError("down")


def run(engine, sql):
    """Run ``sql`` in a transaction of its own (no 1.4 autocommit, which warns)."""
    with engine.begin() as conn:
        conn.execute(text(sql))


def begin(engine):
    """Open and commit an empty transaction."""
    with engine.begin():
        pass


@pytest.fixture
def sqlite_engine(tmp_path):
    """A SQLite file database with a pool (as SQLAlchemy 2.x has by default), disposed after."""
    engine = sqlalchemy.create_engine(
        "sqlite:///{}".format(tmp_path / "app.db"), poolclass=QueuePool, pool_size=2
    )
    with engine.begin() as conn:
        conn.execute(text("create table items (id integer primary key, name text unique)"))
    yield engine
    engine.dispose()


@pytest.fixture
def breaker(clock):
    """The test breaker (see make_breaker)."""
    return make_breaker(clock)


@pytest.fixture
def attached(sqlite_engine, breaker):
    """``breaker`` attached to the SQLite engine; detached afterwards."""
    handle = attach(sqlite_engine, breaker)
    yield handle
    handle.detach()


# -- SQLite ------------------------------------------------------------------


def test_sqlite_connections_and_statements_are_counted(sqlite_engine, attached, breaker):
    """A connection attempt and each statement are one successful call each."""
    sqlite_engine.dispose()  # the fixture's setup connection was made before attach
    with sqlite_engine.begin() as conn:
        conn.execute(text("insert into items (name) values ('a')"))
        conn.execute(text("insert into items (name) values ('b')"))
    assert scalar(sqlite_engine, "select count(*) from items") == 2
    snapshot = breaker.snapshot()
    assert (snapshot.successes, snapshot.failures, snapshot.ignored) == (4, 0, 0)
    assert snapshot.calls_allowed == 4


def test_sqlite_application_errors_count_as_successes(sqlite_engine, clock):
    """IntegrityError and bad SQL prove the database answered: successes, never failures."""
    breaker = make_breaker(clock, failure_threshold=1)
    handle = attach(sqlite_engine, breaker)
    run(sqlite_engine, "insert into items (name) values ('a')")
    with pytest.raises(IntegrityError):
        run(sqlite_engine, "insert into items (name) values ('a')")
    with pytest.raises(OperationalError, match="no such table"):
        run(sqlite_engine, "select * from no_such_table")
    with pytest.raises(OperationalError, match="syntax error"):
        run(sqlite_engine, "selec 1")
    snapshot = breaker.snapshot()
    assert snapshot.failures == 0
    assert snapshot.successes == 4
    assert breaker.state is cbsync.State.CLOSED
    handle.detach()


def test_sqlite_is_failure_overrides_and_gets_the_driver_exception(sqlite_engine, clock, recorder):
    """is_failure receives the DBAPI exception, and its answer decides."""
    breaker = make_breaker(clock, failure_threshold=1)
    breaker.add_listener(recorder)
    seen = []

    def is_failure(exc):
        seen.append(exc)
        return isinstance(exc, sqlite3.IntegrityError)

    handle = attach(sqlite_engine, breaker, is_failure=is_failure)
    with pytest.raises(OperationalError):
        run(sqlite_engine, "select * from no_such_table")
    assert breaker.state is cbsync.State.CLOSED
    run(sqlite_engine, "insert into items (name) values ('a')")
    with pytest.raises(IntegrityError):
        run(sqlite_engine, "insert into items (name) values ('a')")
    assert [type(exc) for exc in seen] == [sqlite3.OperationalError, sqlite3.IntegrityError]
    assert breaker.state is cbsync.State.OPEN
    failure = [event for event in recorder.events if event[0] == "failure"]
    assert len(failure) == 1
    assert isinstance(failure[0][2], sqlite3.IntegrityError)
    handle.detach()


def test_sqlite_is_failure_that_raises_falls_back_to_the_default(sqlite_engine, breaker, caplog):
    """A broken is_failure is logged and the default classification applies."""

    def is_failure(exc):
        raise RuntimeError("bug in is_failure")

    handle = attach(sqlite_engine, breaker, is_failure=is_failure)
    with sqlite_engine.connect() as conn, pytest.raises(OperationalError):
        conn.execute(text("select * from no_such_table"))
    assert breaker.snapshot().failures == 0
    assert "bug in is_failure" in caplog.text
    handle.detach()


def test_sqlite_error_outside_the_driver_is_ignored(sqlite_engine, attached, breaker):
    """An exception that is not the driver's (here from another listener) is ignored."""

    def broken(cursor, statement, parameters, context):
        raise ValueError("listener bug")

    failing = pytest.raises(ValueError, match="listener bug")
    with listening(sqlite_engine, "do_execute", broken), sqlite_engine.connect() as conn, failing:
        conn.execute(text("select :x"), {"x": 1})
    snapshot = breaker.snapshot()
    assert (snapshot.ignored, snapshot.failures) == (1, 0)


def test_sqlite_open_circuit_rejects_warm_and_cold_checkouts(sqlite_engine, attached, breaker):
    """Open: a checkout from a warm pool and a new connection are both rejected, cleanly."""
    assert scalar(sqlite_engine) == 1
    assert sqlite_engine.pool.checkedin() == 1
    open_by_failures(breaker)
    with pytest.raises(DatabaseCircuitOpenError) as warm:
        sqlite_engine.connect()
    assert sqlite_engine.pool.checkedin() == 1  # the pooled connection went back
    assert warm.value.state is cbsync.State.OPEN
    assert warm.value.retry_after == pytest.approx(TIMEOUT)
    sqlite_engine.dispose()
    with pytest.raises(DatabaseCircuitOpenError):
        sqlite_engine.connect()
    assert sqlite_engine.pool.checkedin() == 0
    with pytest.raises(DatabaseCircuitOpenError):
        begin(sqlite_engine)
    assert breaker.snapshot().calls_rejected == 3


def test_sqlite_rejection_is_an_operational_error(sqlite_engine, attached, breaker):
    """Code written for SQLAlchemy catches the rejection as OperationalError and DBAPIError."""
    breaker.trip("maintenance")
    with pytest.raises(OperationalError) as info:
        scalar(sqlite_engine)
    error = info.value
    assert isinstance(error, cbsync.CircuitOpenError)
    assert isinstance(error, DBAPIError)
    assert not isinstance(error, ConnectionError)
    assert str(error) == "circuit 'db' is forced_open (manual=maintenance); no automatic retry"
    assert error.breaker == "db"
    assert error.reason == cbsync.OpenReason("manual", "maintenance")
    assert error.retry_after is None
    assert (error.statement, error.params, error.connection_invalidated) == (None, None, False)
    assert type(error.orig) is cbsync.CircuitOpenError


def test_rejection_pickles():
    """DatabaseCircuitOpenError survives pickling with its fields and message."""
    original = DatabaseCircuitOpenError._from(
        cbsync.CircuitOpenError(
            "db", cbsync.State.OPEN, cbsync.OpenReason("failure_rate", 0.5), 12.5
        )
    )
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is DatabaseCircuitOpenError
    assert (copy.breaker, copy.state, copy.reason, copy.retry_after) == (
        "db",
        cbsync.State.OPEN,
        cbsync.OpenReason("failure_rate", 0.5),
        12.5,
    )
    assert str(copy) == str(original)
    assert repr(copy.orig) == repr(original.orig)


def test_sqlite_checked_out_connection_is_not_interrupted(sqlite_engine, attached, breaker):
    """Statements on a connection checked out before the circuit opened still run, uncounted."""
    with sqlite_engine.connect() as conn:
        breaker.trip()
        before = breaker.snapshot()
        assert conn.execute(text("select 1")).scalar() == 1
        after = breaker.snapshot()
    assert (after.calls_allowed, after.calls_rejected) == (
        before.calls_allowed,
        before.calls_rejected,
    )


def test_sqlite_reconnect_of_invalidated_connection_is_rejected_unwrapped(
    sqlite_engine, attached, breaker
):
    """Reconnecting an invalidated Connection while open raises the rejection itself."""
    with sqlite_engine.connect() as conn:
        conn.invalidate()
        breaker.trip()
        with pytest.raises(DatabaseCircuitOpenError) as info:
            conn.execute(text("select 1"))
    assert type(info.value) is DatabaseCircuitOpenError  # not wrapped in a StatementError


def test_sqlite_half_open_full_rejects_with_half_open_error(
    sqlite_engine, attached, breaker, clock
):
    """While the only trial statement runs, pooled and new checkouts get the half-open error."""
    first, second = sqlite_engine.connect(), sqlite_engine.connect()
    first.close()
    second.close()  # the pool holds two idle connections
    errors = []

    def rejection():
        try:
            sqlite_engine.connect().close()
        except DatabaseCircuitOpenError as exc:
            return exc
        raise AssertionError("the checkout was not rejected")

    def during_trial(cursor, statement, parameters, context):
        if "trial" in statement:
            errors.append(rejection())  # from the idle connection in the pool
            raw = sqlite_engine.raw_connection()  # takes it: raw checkouts are not gated
            try:
                errors.append(rejection())  # needs a new connection
            finally:
                raw.close()

    with sqlite_engine.connect() as conn:
        open_by_failures(breaker)
        clock.advance(TIMEOUT)
        with listening(sqlite_engine, "do_execute", during_trial):
            conn.execute(text("select 1 as trial"))
    assert len(errors) == 2
    for error in errors:
        assert isinstance(error, DatabaseHalfOpenLimitReached)
        assert isinstance(error, cbsync.HalfOpenLimitReached)
        assert isinstance(error, OperationalError)
    assert breaker.snapshot().calls_rejected == 2
    assert breaker.state is cbsync.State.CLOSED  # the trial statement succeeded


def test_sqlite_trial_statement_closes_the_circuit(sqlite_engine, attached, breaker, clock):
    """After the OPEN period a statement on a checked-out connection is the trial call."""
    with sqlite_engine.connect() as conn:
        open_by_failures(breaker)
        conn.execute(text("select 1"))
        assert breaker.state is cbsync.State.OPEN
        clock.advance(TIMEOUT)
        conn.execute(text("select 1"))
    assert breaker.state is cbsync.State.CLOSED


def test_sqlite_keyboard_interrupt_gives_the_trial_permit_back(
    sqlite_engine, attached, breaker, clock
):
    """A trial statement ended by KeyboardInterrupt counts nothing and frees its permit."""

    def interrupt(cursor, statement, parameters, context):
        raise KeyboardInterrupt

    with sqlite_engine.connect() as conn:
        open_by_failures(breaker)
        clock.advance(TIMEOUT)
        with listening(sqlite_engine, "do_execute", interrupt), pytest.raises(KeyboardInterrupt):
            conn.execute(text("select :x"), {"x": 1})
        assert breaker.state is cbsync.State.HALF_OPEN
        before = breaker.snapshot()
    assert (before.successes, before.ignored) == (0, 0)
    assert scalar(sqlite_engine) == 1  # admitted as the (only) trial call: the permit is back
    assert breaker.state is cbsync.State.CLOSED


def test_trial_permit_comes_back_when_another_listener_stops_handle_error(
    sqlite_engine, attached, breaker, clock
):
    """A class-level handle_error listener that raises runs first; the permit still comes back."""

    class Replaced(Exception):
        pass

    def replace(ctx):
        if ctx.engine is sqlite_engine and ctx.execution_context is not None:
            raise Replaced("replaced by the application")

    with sqlite_engine.connect() as conn:
        open_by_failures(breaker)
        clock.advance(TIMEOUT)
        event.listen(Engine, "handle_error", replace)
        try:
            with pytest.raises(Replaced):
                conn.execute(text("select * from no_such_table"))
        finally:
            event.remove(Engine, "handle_error", replace)
    gc.collect()  # the statement's context sits in a traceback reference cycle
    assert breaker.state is cbsync.State.HALF_OPEN
    assert scalar(sqlite_engine) == 1  # the orphaned permit was given back first
    assert breaker.state is cbsync.State.CLOSED


def test_detach_gives_back_the_permit_of_a_running_statement(
    sqlite_engine, attached, breaker, clock
):
    """detach() while a trial statement runs returns its permit; nothing is counted."""

    def detach_now(cursor, statement, parameters, context):
        attached.detach()

    with sqlite_engine.connect() as conn:
        open_by_failures(breaker)
        clock.advance(TIMEOUT)
        with listening(sqlite_engine, "do_execute", detach_now):
            conn.execute(text("select :x"), {"x": 1})
    assert not attached.attached
    assert breaker.snapshot().successes == 0
    assert breaker.call(lambda: "trial") == "trial"  # HalfOpenLimitReached if the permit leaked
    assert breaker.state is cbsync.State.CLOSED


def test_concurrent_statements_complete_every_admitted_call(tmp_path, clock):
    """Threads running statements through CLOSED and HALF_OPEN: no call is left open."""
    threads, statements = 8, 150
    engine = sqlalchemy.create_engine(
        "sqlite:///{}".format(tmp_path / "threads.db"),
        poolclass=QueuePool,
        pool_size=threads,
        connect_args={"check_same_thread": False},
    )
    breaker = make_breaker(clock, success_threshold=10**6, half_open_max_calls=2)
    handle = attach(engine, breaker)

    def open_then_half_open():
        open_by_failures(breaker)
        clock.advance(TIMEOUT)

    barrier = threading.Barrier(threads, action=open_then_half_open, timeout=WAIT)
    errors = []

    def work():
        try:
            with engine.connect() as conn:
                for _ in range(statements):
                    conn.execute(text("select 1"))
                barrier.wait()  # every thread holds a connection: now OPEN, then HALF_OPEN
                for _ in range(statements):
                    conn.execute(text("select 1"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT)
    assert errors == []
    assert breaker.state is cbsync.State.HALF_OPEN
    snapshot = breaker.snapshot()
    assert snapshot.calls_allowed == snapshot.successes + snapshot.failures + snapshot.ignored
    assert snapshot.successes >= threads * statements
    with breaker.guard(), breaker.guard():  # both trial permits are free
        pass
    handle.detach()
    engine.dispose()


def test_detach_removes_every_listener(sqlite_engine, breaker):
    """After detach() the engine behaves as if never attached, and can be attached again."""
    handle = attach(sqlite_engine, breaker)
    listeners = list(handle._listeners)
    handle.detach()
    for identifier, listener, _ in listeners:
        assert not event.contains(sqlite_engine, identifier, listener)
    assert "do_ping" not in vars(sqlite_engine.dialect)
    breaker.trip()
    before = breaker.snapshot()
    sqlite_engine.dispose()
    assert scalar(sqlite_engine) == 1
    assert breaker.snapshot() == before
    handle.detach()  # a second call does nothing
    again = attach(sqlite_engine, breaker)
    with pytest.raises(DatabaseCircuitOpenError):
        sqlite_engine.connect()
    again.detach()


def test_attach_twice_is_a_config_error(sqlite_engine, attached, clock):
    """A second breaker on the same engine, or on one derived from it, is refused."""
    with pytest.raises(cbsync.ConfigError, match="already attached"):
        attach(sqlite_engine, make_breaker(clock))
    with pytest.raises(cbsync.ConfigError, match="already attached"):
        attach(
            sqlite_engine.execution_options(isolation_level="SERIALIZABLE"), make_breaker(clock)
        )


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"engine": "sqlite://"}, "engine='sqlite://' must be a sqlalchemy Engine"),
        ({"breaker": "db"}, "breaker='db' must be a cbsync.CircuitBreaker"),
        ({"name": ""}, "name='' must be a non-empty string"),
        ({"profile": 3}, "profile=3 must be a string"),
        ({"registry": {}}, r"registry=\{\} must be a cbsync.Registry"),
        ({"is_failure": True}, "is_failure=True must be a callable"),
        ({"breaker": True, "name": "x"}, "give either breaker= or name=/registry="),
    ],
)
def test_bad_arguments_are_config_errors(sqlite_engine, clock, arguments, message):
    """Each bad argument raises ConfigError naming it; nothing is attached."""
    arguments = dict(arguments)
    engine = arguments.pop("engine", sqlite_engine)
    if arguments.get("breaker") is True:
        arguments["breaker"] = make_breaker(clock)
    with pytest.raises(cbsync.ConfigError, match=message):
        attach(engine, **arguments)
    attach(sqlite_engine, make_breaker(clock)).detach()


@pytest.mark.parametrize(
    ("url", "name"),
    [
        (
            "postgresql+psycopg2://app:s3cret@DB.Example.com/orders",
            "postgresql://db.example.com:5432/orders",
        ),
        (
            "postgresql://app@127.0.0.1:6543/orders?password=s3cret",
            "postgresql://127.0.0.1:6543/orders",
        ),
        ("postgresql:///orders", "postgresql://localhost:5432/orders"),
        ("postgresql://app:s3cret@[::1]/orders", "postgresql://[::1]:5432/orders"),
        ("mysql+pymysql://app:s3cret@db/shop", "mysql://db:3306/shop"),
        ("sqlite:////var/lib/app.db", "sqlite:////var/lib/app.db"),
        ("sqlite:///relative.db", "sqlite:///relative.db"),
        ("sqlite://", "sqlite:///:memory:"),
        ("firebird://app:s3cret@db/base", "firebird://db/base"),
    ],
)
def test_default_name_never_holds_credentials(url, name):
    """The default name is backend, host, port and database: no user, password or query."""
    result = cb_sqlalchemy._default_name(make_url(url))
    assert result == name
    assert "s3cret" not in result
    assert "app@" not in result


def test_default_registry_is_looked_up_at_each_use(sqlite_engine, breaker_registry, fake_clock):
    """Without breaker=, the current default registry's breaker (profile 'database') is used."""
    breaker_registry.configure({"database": {"failure_threshold": 1}})
    handle = attach(sqlite_engine)
    name = "sqlite:///{}".format(sqlite_engine.url.database)
    first = breaker_registry.get(name, profile="database")
    assert handle.breaker is first
    assert first.config.failure_threshold == 1
    assert scalar(sqlite_engine) == 1
    assert first.snapshot().successes == 1
    other = cbsync.Registry()
    previous = set_default_registry(other)
    try:
        assert scalar(sqlite_engine) == 1
        assert handle.breaker is other.get(name, profile="database")
        assert handle.breaker.snapshot().successes == 1
    finally:
        set_default_registry(previous)
    assert first.snapshot().successes == 1
    handle.detach()


def test_explicit_registry_and_name(sqlite_engine, fake_clock):
    """registry= and name= choose where the breaker comes from and what it is called."""
    registry = cbsync.Registry({"reporting": {"failure_threshold": 7}}, clock=fake_clock)
    handle = attach(sqlite_engine, name="reports-db", profile="reporting", registry=registry)
    assert handle.breaker is registry.get("reports-db", profile="reporting")
    assert handle.breaker.config.failure_threshold == 7
    assert scalar(sqlite_engine) == 1
    assert registry.snapshot()["reports-db"].successes == 1
    handle.detach()


def test_do_connect_listeners_added_after_attach_still_run(tmp_path, breaker):
    """A do_connect listener registered after attach() sets cparams, or connects itself."""
    engine = sqlalchemy.create_engine("sqlite:///{}".format(tmp_path / "x.db"), poolclass=NullPool)
    handle = attach(engine, breaker)
    seen = []

    @event.listens_for(engine, "do_connect")
    def set_timeout(dialect, conn_rec, cargs, cparams):
        cparams["timeout"] = 7.0
        seen.append(dict(cparams))

    assert scalar(engine) == 1
    assert len(seen) == 1
    assert seen[0]["timeout"] == 7.0

    @event.listens_for(engine, "do_connect")
    def connect_myself(dialect, conn_rec, cargs, cparams):
        seen.append("connected myself")
        return sqlite3.connect(*cargs, **cparams)

    assert scalar(engine) == 1
    assert seen[-1] == "connected myself"
    assert breaker.snapshot().successes == 4
    handle.detach()
    engine.dispose()


def test_failed_connection_attempts_are_failures(tmp_path, clock, recorder):
    """A connection attempt the driver refuses is one failure, counted once."""
    breaker = make_breaker(clock)
    breaker.add_listener(recorder)
    missing = tmp_path / "no-such-dir" / "app.db"
    engine = sqlalchemy.create_engine("sqlite:///{}".format(missing), poolclass=NullPool)
    handle = attach(engine, breaker)
    for _ in range(2):
        with pytest.raises(OperationalError, match="unable to open database"):
            engine.connect()
    assert breaker.snapshot().failures == 2
    assert breaker.state is cbsync.State.OPEN
    with pytest.raises(DatabaseCircuitOpenError):
        engine.connect()
    assert recorder.kinds() == ["failure", "failure", "state", "rejected"]
    handle.detach()
    engine.dispose()


def test_module_docstring_examples_run():
    """The examples in the integration's docstrings pass."""
    result = doctest.testmod(cb_sqlalchemy, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


# -- PostgreSQL through a proxy ------------------------------------------------


class TcpProxy:
    """A TCP proxy on loopback that counts connection attempts and can cut the link.

    Each accepted connection is one attempt; ``sent`` counts the bytes sent
    to the server.  While cut, new connections are accepted, counted and
    closed at once (the server seems to hang up), and ``cut()`` drops the
    links already open.
    """

    def __init__(self, host, port):
        self._target = (host, port)
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(16)
        self.port = self._server.getsockname()[1]
        self.attempts = 0
        self.sent = 0
        self._lock = threading.Lock()
        self._cut = False
        self._closing = False
        self._sockets = []
        self._threads = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)
        self._accepter.start()

    def _accept(self):
        while True:
            client, _ = self._server.accept()
            with self._lock:
                if self._closing:
                    client.close()
                    return
                self.attempts += 1
                cut = self._cut
            if cut:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=WAIT)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
                for source, sink, counted in ((client, upstream, True), (upstream, client, False)):
                    thread = threading.Thread(
                        target=self._pump, args=(source, sink, counted), daemon=True
                    )
                    thread.start()
                    self._threads.append(thread)

    def _pump(self, source, sink, counted):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if counted:
                    with self._lock:
                        self.sent += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                _shutdown(sock)

    def cut(self, existing=True):
        """Refuse new connections; with ``existing``, also drop those open now."""
        with self._lock:
            self._cut = True
            sockets = list(self._sockets) if existing else []
        for sock in sockets:
            _shutdown(sock)

    def restore(self):
        """Forward new connections again."""
        with self._lock:
            self._cut = False

    def close(self):
        """Stop accepting, drop every link and close every socket."""
        with self._lock:
            self._closing = True
            sockets = list(self._sockets)
            threads = list(self._threads)
        socket.create_connection(("127.0.0.1", self.port), timeout=WAIT).close()
        self._accepter.join(WAIT)
        self._server.close()
        for sock in sockets:
            _shutdown(sock)
        for thread in threads:
            thread.join(WAIT)
        for sock in sockets:
            sock.close()


def _shutdown(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already shut down or reset


def _postgres_url():
    url = make_url(POSTGRES_URL)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")
    return url


@pytest.fixture(scope="module")
def postgres_url():
    """The test PostgreSQL URL (psycopg2); skips, or fails under CI, when it is unreachable."""
    url = _postgres_url()
    engine = sqlalchemy.create_engine(url, poolclass=NullPool, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(text("select 1"))
    except OperationalError as exc:
        where = repr(url)  # the password hidden
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL at {} is required under CI: {}".format(where, exc.orig))
        pytest.skip("PostgreSQL at {} is not reachable: {}".format(where, exc.orig))
    finally:
        engine.dispose()
    return url


@pytest.fixture
def proxy(postgres_url):
    """A TcpProxy in front of the test PostgreSQL."""
    proxy = TcpProxy(postgres_url.host or "127.0.0.1", postgres_url.port or 5432)
    yield proxy
    proxy.close()


def make_proxied_engine(postgres_url, proxy, **options):
    """An engine whose connections go through ``proxy``: one pooled connection, two overflow."""
    return sqlalchemy.create_engine(
        postgres_url.set(host="127.0.0.1", port=proxy.port),
        pool_size=1,
        max_overflow=2,
        connect_args={"connect_timeout": 5},
        **options,
    )


@pytest.fixture
def proxied_engine(postgres_url, proxy):
    """An engine whose connections go through ``proxy``; disposed after the test."""
    engine = make_proxied_engine(postgres_url, proxy)
    yield engine
    engine.dispose()


@pytest.mark.postgres
def test_postgres_outage_opens_and_recovers_without_manual_step(proxied_engine, proxy, clock):
    """An outage opens the breaker; rejected attempts never reach the server; it recovers."""
    breaker = make_breaker(clock, success_threshold=2)
    handle = attach(proxied_engine, breaker)
    assert scalar(proxied_engine) == 1
    proxy.cut()
    with pytest.raises(OperationalError) as broken:
        scalar(proxied_engine)  # the pooled connection is dead: a disconnect
    assert broken.value.connection_invalidated
    with pytest.raises(OperationalError) as refused:
        scalar(proxied_engine)  # a new connection attempt fails
    assert not isinstance(refused.value, cbsync.CircuitOpenError)
    assert breaker.state is cbsync.State.OPEN
    assert breaker.snapshot().failures == 2
    attempts = proxy.attempts
    for _ in range(3):
        with pytest.raises(DatabaseCircuitOpenError):
            scalar(proxied_engine)
    assert proxy.attempts == attempts
    proxy.restore()
    with pytest.raises(DatabaseCircuitOpenError):
        scalar(proxied_engine)  # still within the OPEN period
    assert proxy.attempts == attempts
    clock.advance(TIMEOUT)
    assert scalar(proxied_engine) == 1  # trial calls: the connection, then the statement
    assert breaker.state is cbsync.State.CLOSED
    assert proxy.attempts == attempts + 1
    assert scalar(proxied_engine, "select 2") == 2
    handle.detach()


@pytest.mark.postgres
def test_postgres_warm_pool_checkout_rejected_and_pooled_connection_kept(
    postgres_url, proxy, clock
):
    """Open with a warm pool: checkouts are rejected unpinged, the connections live on."""
    proxied_engine = make_proxied_engine(postgres_url, proxy, pool_pre_ping=True)
    breaker = make_breaker(clock)
    handle = attach(proxied_engine, breaker)
    with proxied_engine.connect() as held:
        pid = held.execute(text("select pg_backend_pid()")).scalar()
        proxy.cut(existing=False)
        for _ in range(2):
            with pytest.raises(OperationalError):
                proxied_engine.connect()  # needs a second connection: refused
        assert breaker.state is cbsync.State.OPEN
        assert held.execute(text("select pg_backend_pid()")).scalar() == pid
    assert proxied_engine.pool.checkedin() == 1
    attempts, sent = proxy.attempts, proxy.sent
    for _ in range(3):
        with pytest.raises(DatabaseCircuitOpenError):
            proxied_engine.connect()
    assert proxied_engine.pool.checkedin() == 1
    assert (proxy.attempts, proxy.sent) == (attempts, sent)  # not even a pre-ping
    assert breaker.snapshot().calls_rejected == 3
    proxy.restore()
    clock.advance(TIMEOUT)
    assert scalar(proxied_engine, "select pg_backend_pid()") == pid  # the same pooled connection
    assert proxy.attempts == attempts
    assert proxy.sent > sent
    assert breaker.state is cbsync.State.CLOSED
    handle.detach()
    proxied_engine.dispose()


@pytest.mark.postgres
def test_postgres_application_errors_are_not_failures(proxied_engine, clock):
    """A unique violation and a syntax error on PostgreSQL leave the breaker closed."""
    breaker = make_breaker(clock, failure_threshold=1)
    handle = attach(proxied_engine, breaker)
    with proxied_engine.connect() as conn:
        with conn.begin():
            conn.execute(text("create temporary table cbsync_items (name text primary key)"))
            conn.execute(text("insert into cbsync_items values ('a')"))
        with pytest.raises(IntegrityError), conn.begin():
            conn.execute(text("insert into cbsync_items values ('a')"))
        with pytest.raises(sqlalchemy.exc.ProgrammingError), conn.begin():
            conn.execute(text("selec 1"))
        assert conn.execute(text("select count(*) from cbsync_items")).scalar() == 1
    snapshot = breaker.snapshot()
    assert snapshot.failures == 0
    assert breaker.state is cbsync.State.CLOSED
    handle.detach()


def test_postgres_connection_refused_opens_the_breaker(clock):
    """A closed port (connection refused) opens the breaker; then attempts are not made."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    engine = sqlalchemy.create_engine(
        _postgres_url().set(host="127.0.0.1", port=port), connect_args={"connect_timeout": 5}
    )
    breaker = make_breaker(clock)
    handle = attach(engine, breaker)
    for _ in range(2):
        with pytest.raises(OperationalError, match="refused"):
            engine.connect()
    assert breaker.state is cbsync.State.OPEN
    assert breaker.snapshot().failures == 2
    with pytest.raises(DatabaseCircuitOpenError):
        engine.connect()
    handle.detach()
    engine.dispose()


@pytest.mark.postgres
def test_postgres_pre_ping_reconnects_a_killed_connection_counted_at_most_once(
    postgres_url, clock
):
    """pool_pre_ping replaces a backend killed by pg_terminate_backend; no failure is counted."""
    engine = sqlalchemy.create_engine(
        postgres_url, pool_size=1, pool_pre_ping=True, connect_args={"connect_timeout": 5}
    )
    admin = sqlalchemy.create_engine(
        postgres_url, poolclass=NullPool, isolation_level="AUTOCOMMIT"
    )
    breaker = make_breaker(clock, failure_threshold=1)
    handle = attach(engine, breaker)
    try:
        pid = scalar(engine, "select pg_backend_pid()")
        with admin.connect() as conn:
            # The timeout makes it wait until the backend has exited.
            killed = conn.execute(
                text("select pg_terminate_backend(:pid, 5000)"), {"pid": pid}
            ).scalar()
        assert killed is True
        new_pid = scalar(engine, "select pg_backend_pid()")
        assert new_pid != pid
        snapshot = breaker.snapshot()
        assert snapshot.failures <= 1
        assert snapshot.failures == 0  # the failed ping is not a call; the reconnection is
        assert snapshot.successes == 4  # two connection attempts, two statements
        assert breaker.state is cbsync.State.CLOSED
    finally:
        handle.detach()
        engine.dispose()
        admin.dispose()
