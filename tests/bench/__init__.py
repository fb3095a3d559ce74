"""The benchmark of the operator against the real local stack (`make bench`).

`python -m bench.bench` runs from tests/ (as `make bench` does); the operator's code and
the spout101 worker code it measures sit beside tests/, so put them on the path here.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _sub in ("operator", "images/spout101"):
    if str(ROOT / _sub) not in sys.path:
        sys.path.insert(0, str(ROOT / _sub))
