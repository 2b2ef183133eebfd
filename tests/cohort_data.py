"""Tiny synthetic cohorts for the cohort tests and the scaling benchmark: BraTS-style folders of
4-modality NIfTI cases (a bright blob as tumour) and a small VGG3D saved as a state dict."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch

MODALITIES = ("t1", "t1ce", "t2", "flair")
FACTORY = "mmxai_fast.models:VGG3D"
FACTORY_KWARGS = '{"in_channels": 4, "widths": [4, 8], "hidden": 8}'


def write_case(folder: Path, case_id: str, shape: Sequence[int], seed: int) -> None:
    import nibabel as nib

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    head = (grid ** 2).sum(0) < 0.8
    centre = rng.uniform(-0.3, 0.3, size=3)
    tumour = ((grid - centre[:, None, None, None]) ** 2).sum(0) < 0.12
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for m, name in enumerate(MODALITIES):
        volume = head * (1.0 + 0.2 * m) + tumour * (0.5 + 0.3 * m) + rng.normal(0, 0.05, size=shape)
        nib.save(nib.Nifti1Image(volume.astype(np.float32), affine), str(folder / f"{case_id}_{name}.nii.gz"))
    nib.save(nib.Nifti1Image(tumour.astype(np.uint8), affine), str(folder / f"{case_id}_seg.nii.gz"))


def make_cohort(root: Path, n_cases: int, shape: Sequence[int] = (12, 12, 12), seed: int = 0) -> List[str]:
    ids = [f"Case_{i:03d}" for i in range(n_cases)]
    for i, case_id in enumerate(ids):
        write_case(root / case_id, case_id, shape, seed + i)
    return ids


def save_model(path: Path, seed: int = 0, factory_kwargs: str = FACTORY_KWARGS) -> Path:
    import json

    from mmxai_fast.models import VGG3D

    torch.manual_seed(seed)
    model = VGG3D(**json.loads(factory_kwargs))
    torch.save(model.state_dict(), str(path))
    return path


def slow_vgg3d(**kwargs):
    """A VGG3D that sleeps 50 ms per call (CPU-cheap): a kill test has time to act mid-case."""
    import time

    from mmxai_fast.models import VGG3D

    class SlowVGG3D(VGG3D):
        def forward(self, x):
            time.sleep(0.05)
            return super().forward(x)

    return SlowVGG3D(**kwargs)


SLOW_FACTORY = "cohort_data:slow_vgg3d"
# Different batch compositions of the model (world sizes, chunking) change float32 rounding only.
RTOL, ATOL = 1e-4, 1e-6


def assert_same_outputs(a: Path, b: Path, case_ids) -> None:
    """Both cohort output folders hold the same finished cases with equal maps and importances."""
    import json

    import nibabel as nib

    for case_id in case_ids:
        names = sorted(p.name for p in (a / case_id).iterdir())
        assert names == sorted(p.name for p in (b / case_id).iterdir())
        for name in (n for n in names if n.endswith(".nii.gz")):
            x = nib.load(str(a / case_id / name)).get_fdata()
            y = nib.load(str(b / case_id / name)).get_fdata()
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, err_msg=f"{case_id}/{name}")
        ia = json.loads((a / case_id / "importance.json").read_text())
        ib = json.loads((b / case_id / "importance.json").read_text())
        assert ia.keys() == ib.keys() and all(abs(ia[k] - ib[k]) < 1e-4 for k in ia)
    ma, mb = (json.loads((d / "manifest.json").read_text()) for d in (a, b))
    assert ma["done"] == mb["done"] == sorted(case_ids) and ma["settings_hash"] == mb["settings_hash"]
