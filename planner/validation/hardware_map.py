"""The real hardware of published runs whose `cluster` is only the closest preset.

`hardware_map.json` maps a run name to a sourced preset of the machine it ran on (DGX A800,
HGX H800, Meta's 500 W H100 96GB hosts, IBM's thin-network nodes) and why. A mapped run is
validated on that preset, with the error on its closest preset (the run's own `cluster`)
reported beside it (../shared/validation/README.md, caveats of the second set).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

MAP_PATH = Path(__file__).with_name("hardware_map.json")


@lru_cache(maxsize=1)
def hardware_map() -> dict[str, dict[str, str]]:
    """{run name: {"cluster": preset, "why": reason}}."""
    return json.loads(MAP_PATH.read_text())


def real_cluster(run_name: str) -> str | None:
    """The preset of the hardware `run_name` really ran on, or None when its `cluster` is it."""
    entry = hardware_map().get(run_name)
    return entry["cluster"] if entry else None
