"""Shared fixtures: a seeded simulator with three merchants, clients bound to it.

Keys are generated at test time (session scope: RSA generation is the slow part).
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime

import httpx
import pytest

import wxpay
from wxpay.models import BEIJING
from wxpay.sim import SimOptions, Simulator, VirtualClock
from wxpay.sim.keys import new_merchant

# Prefect offline and quiet, with a private home (shared/notes/runtime.md §2); set before Prefect is imported.
for _name, _value in (
    ("PREFECT_HOME", tempfile.mkdtemp(prefix="wxrecon-prefect-")),
    ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
    ("DO_NOT_TRACK", "1"),
    ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"),
    ("PREFECT_LOGGING_LEVEL", "WARNING"),
):
    os.environ.setdefault(_name, _value)

pytest_plugins = [
    "tests.clock",  # every run on a day of its own (WXRECON_TEST_NOW reproduces one)
    "tests.dbservers",  # real PostgreSQL and MariaDB servers, started per session
    "tests.prefectserver",  # a real Prefect server, for the tests that deploy
    "tests.lakeservers",  # an S3-compatible server and DuckLakes on it, for the DuckLake tests
]

SLOW_FIXTURES = {"postgres_server", "mariadb_server", "prefect_harness", "prefect_server", "s3_server", "lake"}
"""A test that starts a database server or Prefect's harness is slow; so are whole modules that say so
(``pytestmark = pytest.mark.slow``: notebooks, the demo, the command line). ``-m "not slow"`` is the quick loop."""


def _lake_environment() -> bool:
    """Whether this is the DuckLake environment (.venv-lake: DuckDB 1.5.5 with the ducklake extra)."""
    import importlib.util

    import duckdb

    return duckdb.__version__.startswith("1.5") and importlib.util.find_spec("duckdb_extensions") is not None


LAKE = _lake_environment()
LAKE_MODULES = ("test_lake.py", "test_workers.py")
"""Modules that need DuckLake: they run in the DuckLake environment, which runs nothing else (./scripts/test
runs the suite in both environments; a test never skips for a missing extension)."""

SLOW_MODULES = (
    "test_cli.py",
    "test_demo.py",
    "test_deployments.py",
    "test_flows.py",
    "test_notebooks.py",
    "test_readme.py",
    "test_receiver_faults.py",
)
"""Modules whose every test is slow: the quick loop does not even import them (Prefect, Jupyter, pandas)."""


def pytest_ignore_collect(collection_path, config):
    name = collection_path.name
    if name.startswith("test_") and name.endswith(".py") and (name in LAKE_MODULES) != LAKE:
        return True
    if config.getoption("markexpr", "") == "not slow" and name in SLOW_MODULES:
        return True
    return None


def pytest_collection_modifyitems(config, items):
    # files named on the command line are collected whatever pytest_ignore_collect says: deselect here
    elsewhere = [item for item in items if (item.path.name in LAKE_MODULES) != LAKE]
    if elsewhere:
        config.hook.pytest_deselected(items=elsewhere)
        items[:] = [item for item in items if item not in elsewhere]
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


INITIATOR = "1900000100"
PARTICIPANTS = ("1900000101", "1900000102")
APPID = "wxd678efh567hg6787"
START = datetime(2026, 11, 26, 9, 0, 0, tzinfo=BEIJING)


@pytest.fixture(scope="session")
def merchant_pool():
    """Key material for four merchants, generated once per session (the fourth is in certificate mode)."""
    import random

    rng = random.Random(42)
    pool = [
        new_merchant(m, APPID, rng=rng, fee_rate_bp=bp)
        for m, bp in ((INITIATOR, 60), (PARTICIPANTS[0], 38), (PARTICIPANTS[1], 54))
    ]
    pool.append(new_merchant("1900000200", APPID, rng=rng, mode="certificate"))
    return pool


class NotifyTransport(httpx.BaseTransport):
    """Where the simulator's callbacks go in tests: loopback receivers over real HTTP; the
    placeholder host merchant.example.com is acknowledged at once (no outbound network)."""

    def __init__(self):
        self.real = httpx.HTTPTransport()
        self.acknowledged: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host in ("127.0.0.1", "localhost"):
            return self.real.handle_request(request)
        self.acknowledged.append(request)
        return httpx.Response(204)


@pytest.fixture
def sim(merchant_pool):
    """A fresh simulator (fresh state, shared keys) at 2026-11-26 09:00 Beijing time."""
    from copy import copy

    simulator = Simulator(
        [copy(m) for m in merchant_pool],
        options=SimOptions(seed=7),
        clock=VirtualClock(START),
        notify_transport=NotifyTransport(),
    )
    for m in simulator.merchants.values():
        m.platform_keys = list(m.platform_keys)
    yield simulator
    simulator.close()


@pytest.fixture
def initiator(sim):
    return sim.merchants[INITIATOR]


@pytest.fixture
def client(sim, initiator):
    """A sync client for the initiator, talking to the simulator through httpx.MockTransport."""
    with wxpay.Client(transport=httpx.MockTransport(sim.handle), **initiator.client_kwargs()) as c:
        yield c


def combine_request(
    number: str = "C20261126001", amounts=(12800, 3550), notify_url="https://merchant.example.com/notify"
):
    """A valid Native combine-order request: one sub order per participant."""
    return wxpay.CombineNativeRequest(
        combine_appid=APPID,
        combine_mchid=INITIATOR,
        combine_out_trade_no=number,
        notify_url=notify_url,
        sub_orders=[
            {
                "mchid": mchid,
                "attach": f"cmb={number}",
                "amount": {"total_amount": amount},
                "out_trade_no": f"{number}S{i}",
                "description": f"课程 {i}",
            }
            for i, (mchid, amount) in enumerate(zip(PARTICIPANTS * 5, amounts, strict=False), start=1)
        ],
    )


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's own test harness (a temporary API server and database), shared by the flow tests."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with (
        prefect_test_harness(server_startup_timeout=120),
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    ):
        yield
