"""Every Python code block in README.md and docs/ runs as written.

Blocks of one file run in order, in one namespace, in a temporary working
directory, with a fresh default registry.  A few names stand for the
reader's own services, as the pages say: ``api_url`` (a local HTTP service
answering 200 with JSON), ``redis_url`` (the test Redis) and ``tmp_path``.
Blocks fenced as ``python`` run; other fences (``sh``, ``yaml``, ``text``,
``ini``) are shown only.
"""

import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import cbsync
from cbsync import _config, _registry

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(page: Path, kind: str = ""):
    """The page's ```python blocks; ``kind="pytest"`` selects ```python pytest ones."""
    text = page.read_text(encoding="utf-8")
    return [code for info, code in FENCE.findall(text) if info.strip() == kind]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "EUR": 1.0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        pass


@pytest.fixture
def api_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:{}".format(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_pages_have_examples():
    """The README and every docs page exist; the README has Python examples."""
    assert (ROOT / "docs").is_dir()
    assert len(python_blocks(ROOT / "README.md")) >= 5


def _ids(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=_ids)
def test_examples_run(page, api_url, tmp_path, monkeypatch):
    """The page's Python blocks run in order without error."""
    blocks = python_blocks(page)
    source = "\n".join(blocks)
    if "redis_url" in source:
        redis = pytest.importorskip("redis")
        url = os.environ.get("CBSYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
        try:
            redis.Redis.from_url(url, socket_timeout=2).ping()
        except redis.RedisError as exc:
            if os.environ.get("CI"):
                raise
            pytest.skip("Redis at {} is not reachable: {}".format(url, exc))
    monkeypatch.chdir(tmp_path)
    previous = _registry.set_default_registry(cbsync.Registry())
    namespace = {
        "__name__": "docs_example",
        "api_url": api_url,
        "tmp_path": tmp_path,
        "redis_url": os.environ.get("CBSYNC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
    }
    try:
        for number, block in enumerate(blocks, 1):
            code = compile(block, "{} block {}".format(page.name, number), "exec")
            exec(code, namespace)
    finally:
        _registry.set_default_registry(previous)
        if "redis_url" in source:  # the examples use the prefix shop:cb:
            client = redis.Redis.from_url(namespace["redis_url"])
            keys = list(client.scan_iter("shop:cb:*"))
            if keys:
                client.delete(*keys)
            client.close()


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p, "pytest")], ids=_ids)
def test_pytest_examples_pass(page, pytester):
    """Blocks fenced as ```python pytest are test files; they pass with the cbsync plugin."""
    blocks = python_blocks(page, "pytest")
    for number, block in enumerate(blocks, 1):
        pytester.makepyfile(**{"test_example_{}".format(number): block})
    # The cbsync plugin loads by its entry point.  (In-process, pytest cannot
    # rewrite the asserts of cbsync, imported already by this run, and says so
    # with a warning that is about the test run, not the example.)
    result = pytester.runpytest("-W", "error", "-W", "ignore::pytest.PytestAssertRewriteWarning")
    result.assert_outcomes(passed=sum(block.count("\ndef test_") for block in blocks))


def test_configuration_reference_matches_the_config_class():
    """docs/configuration.md lists every field, with its real default, and nothing else."""
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", text, re.MULTILINE)
    documented = dict(rows)
    defaults = cbsync.CircuitBreakerConfig()
    assert list(documented) == list(_config.FIELD_NAMES)
    for field, shown in documented.items():
        value = getattr(defaults, field)
        expected = "(Exception,)" if value == (Exception,) else repr(value)
        assert shown == expected.replace("'", '"'), field


YAML_FENCE = re.compile(r"^```yaml[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
YAML_EXAMPLES = [
    (page, block)
    for page in PAGES
    for block in YAML_FENCE.findall(page.read_text(encoding="utf-8"))
    if "circuit_breaker:" in block
]


@pytest.mark.parametrize(
    ("page", "block"), YAML_EXAMPLES, ids=[_ids(page) for page, _ in YAML_EXAMPLES]
)
def test_yaml_examples_load(page, block, tmp_path):
    """Every configuration file shown in the docs loads and resolves every profile."""
    path = tmp_path / "breakers.yaml"
    path.write_text(block, encoding="utf-8")
    registry = cbsync.load_config(str(path), registry=cbsync.Registry())
    for profile in registry.profiles:
        assert isinstance(registry.config_for("x", profile), cbsync.CircuitBreakerConfig)
