"""Values that replace removed features (Jin et al. 2023: zeros, or Gaussian noise with each
modality's mean and standard deviation)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .case import Case
from .._validation import finite_real, is_int

__all__ = ["Baseline"]

_KINDS = ("zeros", "constant", "gaussian")


@dataclass(frozen=True)
class Baseline:
    """An uninformative reference input. Build with :meth:`zeros`, :meth:`constant` or
    :meth:`gaussian`; :meth:`tensor` gives the ``[M, *S]`` baseline of a case.

    :func:`mmxai_fast.explain` keeps the input's own values on the background (outside
    ``case.foreground``), whatever the baseline, so only foreground superpixels are removed.
    """

    kind: str = "zeros"
    value: float = 0.0
    seed: int = 0

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"Baseline.kind must be one of {_KINDS}, got {self.kind!r}")
        finite_real(self.value, "Baseline value")
        if not is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise ValueError(f"Baseline seed must be an int in [0, 2**63), got {self.seed!r}")

    @classmethod
    def zeros(cls) -> "Baseline":
        return cls("zeros")

    @classmethod
    def constant(cls, value: float) -> "Baseline":
        return cls("constant", value=value)

    @classmethod
    def gaussian(cls, seed: int = 0) -> "Baseline":
        """Noise ``N(mean_m, std_m^2)`` per modality ``m``, statistics over the foreground,
        drawn from a generator seeded with ``seed`` (the same case and seed give the same noise)."""
        return cls("gaussian", seed=seed)

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> "Baseline":
        """``"zeros"``, ``"gaussian"`` or a number (constant), as on the command line."""
        if text in ("zeros", "gaussian"):
            return cls.zeros() if text == "zeros" else cls.gaussian(seed)
        try:
            return cls.constant(float(text))
        except ValueError:
            raise ValueError(f"baseline must be 'zeros', 'gaussian' or a number, got {text!r}") from None

    def describe(self) -> str:
        return {"zeros": "zeros", "constant": f"constant {self.value:g}",
                "gaussian": f"gaussian (seed {self.seed})"}[self.kind]

    def tensor(self, case: Case) -> Tensor:
        """The baseline of ``case``: float32 ``[M, *S]`` on ``case.image``'s device."""
        image = case.image
        if self.kind == "zeros":
            return torch.zeros_like(image)
        if self.kind == "constant":
            return torch.full_like(image, float(self.value))
        fg = case.foreground
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(image.shape, generator=generator, dtype=torch.float32)
        out = torch.empty_like(noise)
        for m in range(image.shape[0]):
            values = image[m].cpu().double()
            values = values[fg.cpu()] if fg is not None else values.reshape(-1)
            out[m] = noise[m] * float(values.std(unbiased=False)) + float(values.mean())
        return out.to(image.device)
