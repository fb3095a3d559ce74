"""The soak of the operator against the real local stack (`make soak`).

`python -m soak.soak` runs from tests/; the operator's code sits beside tests/.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for _sub in ("operator", "images/spout101"):
    if str(ROOT / _sub) not in sys.path:
        sys.path.insert(0, str(ROOT / _sub))
