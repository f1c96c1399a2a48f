"""A demo publisher: believable, changing updates for a few users.

Run by ``make run`` beside the gateway so that a new user sees updates move.
"""

from __future__ import annotations

import logging
import random
import threading
from decimal import Decimal

from gateway.config import Config
from gateway.errors import PublishError
from gateway.publisher import Publisher

log = logging.getLogger(__name__)

SYMBOLS = ("AAPL", "MSFT", "NVDA", "TSLA")


class DemoBook:
    """One demo user's account, moved a little at every step."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.cash = Decimal("10000.00")
        self.positions = {symbol: rng.randint(1, 50) for symbol in SYMBOLS}
        self.prices = {symbol: Decimal(rng.randint(100, 900)) for symbol in SYMBOLS}
        self.order_id = 0

    def step(self) -> dict[str, object]:
        for symbol in SYMBOLS:
            self.prices[symbol] += Decimal(self.rng.randint(-100, 100)) / 100
        symbol = self.rng.choice(SYMBOLS)
        self.order_id += 1
        side = "buy" if self.positions[symbol] == 0 else self.rng.choice(("buy", "sell"))
        self.positions[symbol] += 1 if side == "buy" else -1
        self.cash += -self.prices[symbol] if side == "buy" else self.prices[symbol]
        value = sum(self.prices[s] * q for s, q in self.positions.items())
        return {
            "balance": {"usd": str(self.cash)},
            "positions": [{"symbol": s, "qty": q, "price": str(self.prices[s])} for s, q in self.positions.items()],
            "pnl": {"market_value": str(value), "day": str(value - Decimal(20000))},
            "orders": {"id": self.order_id, "symbol": symbol, "side": side, "qty": 1, "status": "filled"},
        }


def run(config: Config, *, users: int, interval: float, rounds: int, stop: threading.Event | None = None) -> None:
    """Publish one update per topic and user every ``interval`` seconds."""
    stop = stop or threading.Event()
    rng = random.Random(7)
    books = {str(user): DemoBook(rng) for user in range(1, users + 1)}
    done = 0
    with Publisher(config=config) as publisher:
        while not stop.is_set() and (rounds == 0 or done < rounds):
            for user, book in books.items():
                for topic, data in book.step().items():
                    if topic in config.topics:
                        _publish(publisher, user, topic, data)
            done += 1
            stop.wait(interval)


def _publish(publisher: Publisher, user: str, topic: str, data: object) -> None:
    try:
        publisher.publish(user, topic, data)
    except PublishError as exc:
        log.warning("demo update not published: %s", exc)
