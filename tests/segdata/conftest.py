"""Small dataset folders written by the tests themselves (tmp_path), in any layout and state of disrepair."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from segdata_helpers import blob_image, write_png


@pytest.fixture
def make_dataset(tmp_path: Path) -> Callable[..., Path]:
    """make_dataset(names, label_values=(0, 255), size=(24, 32), splits={...}, yaml=None) -> root."""

    def make(names=("a", "b", "c", "d", "e", "f"), *, label_values=(0, 255), size=(24, 32),
             splits: dict[str, list[str]] | None = None, yaml: str | None = None, root: str = "set") -> Path:
        folder = tmp_path / root
        rng = np.random.default_rng(len(names))
        for name in names:
            image = blob_image(rng, size)
            write_png(folder / "Images" / f"{name}.png", image)
            label = np.asarray(label_values, np.uint8)[(image > 127).astype(int) % len(label_values)]
            write_png(folder / "Labels" / f"{name}.png", label)
        for split, listed in (splits or {}).items():
            path = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{n}\n" for n in listed))
        if yaml is not None:
            (folder / "dataset.yaml").write_text(yaml)
        return folder

    return make
