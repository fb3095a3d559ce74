"""The operator's Prometheus samples, as the tests and the bench read them."""

from __future__ import annotations

import re
import urllib.request

LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int, host: str = "127.0.0.1") -> dict[str, float]:
    """Every sample on the operator's /metrics, keyed by name with its labels."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        return samples(response.read().decode())


def samples(text: str) -> dict[str, float]:
    """Every sample of a /metrics page, keyed by name with its labels."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def total(samples: dict[str, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`: total(s, "x", trigger="drift")
    adds x{trigger="drift",result="Ready"} and x{trigger="drift",result="PachdUnavailable"}."""
    found = 0.0
    for key, value in samples.items():
        sample, _, rest = key.partition("{")
        if sample == name and labels.items() <= dict(LABEL.findall(rest)).items():
            found += value
    return found
