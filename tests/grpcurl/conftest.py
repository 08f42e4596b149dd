import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "tools"))

from presenced_server import Presenced, presenced  # noqa: E402,F401  (the fixture)

__all__ = ["Presenced", "presenced"]
