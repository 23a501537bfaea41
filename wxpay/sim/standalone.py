"""The simulator on its own: served on a port, its merchants' test credentials written, optionally a day of business.

What ``python -m wxpay.sim serve`` and ``wxrecon sim`` both run. :func:`start_standalone` returns once the
simulator answers; by then it has written, under ``state_dir``::

    merchants/<mchid>/          apiclient_key.pem, apiv3_key.txt, wechatpay_public_key.pem, merchant.json
    business/<YYYY-MM-DD>/      orders.parquet, refunds.parquet: the shop's records of a day of business
    simulator.json              what :attr:`Standalone.info` says (written last: its presence means "ready")

Every start is a new world (fresh keys, an empty ledger): the records of earlier days of business under
``business/`` are removed first, as they describe orders this simulator never saw.

:meth:`Standalone.wait` serves until SIGTERM or Ctrl-C, then stops.
"""

from __future__ import annotations

import json
import signal
import threading
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

from wxpay.models import BEIJING, format_rfc3339
from wxpay.sim.business import BusinessDay, create_business_day
from wxpay.sim.clock import VirtualClock
from wxpay.sim.server import BackgroundServer, serve
from wxpay.sim.simulator import SimOptions, Simulator

__all__ = ["BUSINESS_DIR", "Standalone", "start_standalone"]

BUSINESS_DIR = "business"
"""Under the state directory: one folder per day of business, named by its date."""


@dataclass
class Standalone:
    """A served simulator and what it wrote; :attr:`info` is also ``state_dir/simulator.json``."""

    sim: Simulator
    server: BackgroundServer
    state_dir: Path
    business: BusinessDay | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def info(self) -> dict[str, Any]:
        credentials = self.state_dir / "merchants"
        info: dict[str, Any] = {
            "base_url": self.url,
            "credentials": str(credentials),
            "business_root": str(self.state_dir / BUSINESS_DIR),
            "clock": format_rfc3339(self.sim.clock.now()),
            "merchants": [
                {
                    "mchid": m.mchid,
                    "appid": m.appid,
                    "merchant_serial_no": m.merchant_serial,
                    "wechatpay_public_key_id": m.public_key_id,
                    "fee_rate_bp": m.fee_rate_bp,
                    "combine_initiator": n == 0,
                    "credentials": str(credentials / m.mchid),
                }
                for n, m in enumerate(self.sim.merchants.values())
            ],
        }
        if self.business is not None:
            folder = self.state_dir / BUSINESS_DIR / self.business.day.isoformat()
            info["business"] = {
                "day": self.business.day.isoformat(),
                "orders": str(folder / "orders.parquet"),
                "refunds": str(folder / "refunds.parquet"),
                "notify_url": self.business.notify_url,
                **{k: len(v) for k, v in self.business.to_json()["combine_orders"].items()},
            }
        return info

    def wait(self) -> None:
        """Serve until SIGTERM or Ctrl-C (main thread only), then stop."""
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def stop(self) -> None:
        self.server.stop()
        self.sim.close()


def start_standalone(
    *,
    host: str = "127.0.0.1",
    port: int = 8421,
    merchants: int = 3,
    seed: int = 0,
    start: datetime | None = None,
    state_dir: str | Path = Path("var/sim"),
    business_day: date | None = None,
    orders: int = 36,
    notify_url: str | None = None,
    shared_keys: bool = False,
) -> Standalone:
    """Serve a simulator of ``merchants`` merchants on ``host:port`` (0: any free port), its business clock at
    ``start`` (default: now, Beijing); with ``business_day``, create that day of business
    (:func:`~wxpay.sim.business.create_business_day`, ``orders`` and ``seed``) and write its records.
    ``shared_keys``: merchants after the first reuse its keys (load tests with thousands of merchants)."""
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    (state / "simulator.json").unlink(missing_ok=True)
    _clear_business(state / BUSINESS_DIR)
    sim = Simulator.with_merchants(
        merchants,
        options=SimOptions(seed=seed),
        clock=VirtualClock(start or datetime.now(BEIJING)),
        shared_keys=shared_keys,
    )
    for merchant in sim.merchants.values():
        merchant.export(state / "merchants")
    server = serve(sim, host, port)
    running = Standalone(sim, server, state)
    try:
        if business_day is not None:
            running.business = create_business_day(sim, business_day, orders=orders, seed=seed, notify_url=notify_url)
            running.business.book.write_parquet(state / BUSINESS_DIR / business_day.isoformat())
        partial = state / "simulator.json.partial"
        partial.write_text(json.dumps(running.info, indent=2))
        partial.replace(state / "simulator.json")
    except BaseException:
        running.stop()
        raise
    return running


def _clear_business(root: Path) -> None:
    """Remove the records of earlier days of business (only the files this module writes)."""
    if not root.is_dir():
        return
    for folder in root.iterdir():
        if not folder.is_dir():
            continue
        try:
            date.fromisoformat(folder.name)
        except ValueError:
            continue
        for name in ("orders.parquet", "refunds.parquet"):
            (folder / name).unlink(missing_ok=True)
        if not any(folder.iterdir()):
            folder.rmdir()
