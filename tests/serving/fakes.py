"""Stand-ins that need no TensorFlow: a folder shaped like the train step's Model artifact."""

from __future__ import annotations

import os
from pathlib import Path


def fake_export(folder: Path, tag: str = "a", big: int = 0) -> Path:
    """A folder shaped like the train step's Model artifact (no TF needed here)."""
    (folder / "variables").mkdir(parents=True)
    (folder / "assets").mkdir()
    (folder / "saved_model.pb").write_bytes(b"pb-" + tag.encode())
    (folder / "variables" / "variables.index").write_bytes(b"index-" + tag.encode())
    (folder / "variables" / "variables.data-00000-of-00001").write_bytes(os.urandom(big or 1000))
    (folder / "model.keras").write_bytes(b"keras")
    (folder / "test_predictions.npy").write_bytes(b"npy")
    return folder
