"""An offline WeChat Pay APIv3 simulator (spec §9).

WeChat Pay has no APIv3 sandbox. :class:`Simulator` is a request handler first — plug it
into ``httpx.MockTransport(sim.handle)`` for unit tests — and :func:`serve` runs the same
object on 127.0.0.1 for integration tests, notebooks and the demo
(``python -m wxpay.sim``).
"""

from wxpay.sim.business import BusinessDay, create_business_day
from wxpay.sim.clock import VirtualClock
from wxpay.sim.keys import SimMerchant, new_merchant
from wxpay.sim.records import MerchantBook
from wxpay.sim.server import BackgroundServer, serve
from wxpay.sim.simulator import SimOptions, Simulator

__all__ = [
    "BackgroundServer",
    "BusinessDay",
    "MerchantBook",
    "SimMerchant",
    "SimOptions",
    "Simulator",
    "VirtualClock",
    "create_business_day",
    "new_merchant",
    "serve",
]
