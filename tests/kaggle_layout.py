"""A small dataset in the Kaggle competition's layout, generated (no real data ships).

retain.csv, forget.csv, validation.csv and test.csv with columns image_id, person_id, age,
age_group; images/<person>/<k>.png, as the competition named them (image_id "<person>-<k>"). The
pixels are the embedded synthetic faces, so a model trained on them learns and memorises.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harness.data.manifest import age_groups
from harness.data.synthetic import SyntheticOptions, generate_faces


def write_kaggle_layout(root: Path, *, persons: dict[str, int] | None = None, images_per_person=(3, 4),
                        size: int = 16, seed: int = 0) -> dict[str, list[str]]:
    """Write the layout under `root`; returns each CSV's image ids. `persons`: persons per file."""
    persons = persons or {"retain": 24, "forget": 3, "validation": 5, "test": 5}
    faces = generate_faces(SyntheticOptions(n_persons=sum(persons.values()), images_per_person=images_per_person,
                                            image_size=size, seed=seed))
    groups = age_groups(faces.age)
    pixels = np.clip(faces.images, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)  # NCHW -> NHWC
    ids: dict[str, list[str]] = {}
    first = 0
    for name, count in persons.items():
        rows = []
        for row in np.flatnonzero((faces.person >= first) & (faces.person < first + count)):
            person, k = int(faces.person[row]), int(faces.index[row])
            path = root / "images" / f"{person:04d}" / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[row]).save(path)
            rows.append({"image_id": f"{person:04d}-{k}", "person_id": f"{person:04d}", "age": int(faces.age[row]),
                         "age_group": int(groups[row])})
        pd.DataFrame(rows).to_csv(root / f"{name}.csv", index=False)
        ids[name] = [r["image_id"] for r in rows]
        first += count
    return ids
