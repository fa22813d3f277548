"""Reading one counter out of a Prometheus text exposition (Ray's metrics port, a service's).

Fetched with the standard library (a loopback GET of ``/metrics``) and parsed by
``prometheus_client``'s own parser; the lines of other metrics are dropped first, as a Ray
head exposes some half a megabyte of them.
"""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["counter_total", "label_values", "scrape"]


def scrape(url: str, timeout_s: float = 10.0) -> str:
    """The text a ``/metrics`` endpoint serves; OSError when it does not answer."""
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        text: str = response.read().decode("utf-8", errors="replace")
        return text


def _samples(text: str, sample: str) -> list[tuple[dict[str, str], float]]:
    kept = "\n".join(
        line for line in text.splitlines() if line.startswith((sample + "{", sample + " "))
    )
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(kept + "\n")
        for s in family.samples
        if s.name == sample
    ]


def counter_total(text: str, sample: str, **labels: str) -> float | None:
    """The sum of ``sample`` over its series whose labels include ``labels``; None if none."""
    values = [
        value
        for found, value in _samples(text, sample)
        if all(found.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


def label_values(text: str, sample: str, label: str) -> set[str]:
    """The values ``label`` takes across the series of ``sample``."""
    return {found[label] for found, _ in _samples(text, sample) if label in found}
