"""Process scaffolding shared by the consumer services: logging, settings, signals, the loop."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence

from kafka.consumer.fetcher import ConsumerRecord

from skyeye import telemetry
from skyeye.adapters import kafka
from skyeye.settings import Settings
from skyeye.stack import resolve


def service_settings(service: str) -> Settings:
    """Logging, tracing and the resolved settings of one service process."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    settings = resolve(Settings())
    telemetry.setup(service, settings.home)
    return settings


def run_consumer(
    handle_batch: Callable[[Sequence[ConsumerRecord]], None],
    settings: Settings,
    topic: str,
    group: str,
    max_poll_records: int,
) -> None:
    """Consume until SIGTERM/SIGINT, finishing (and committing) the batch in hand first."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    consumer = kafka.consumer(settings, topic, group, max_poll_records)
    try:
        kafka.consume(consumer, handle_batch, stop)
    finally:
        consumer.close()
