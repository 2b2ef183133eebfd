"""Values that replace removed features (Jin et al. 2023: zeros, or Gaussian noise with each
modality's mean and standard deviation; or a blurred copy of the input, Fong & Vedaldi 2017)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .case import Case
from .._validation import finite_real, is_int

__all__ = ["Baseline"]

_KINDS = ("zeros", "constant", "gaussian", "blur")


@dataclass(frozen=True)
class Baseline:
    """An uninformative reference input. Build with :meth:`zeros`, :meth:`constant`,
    :meth:`gaussian` or :meth:`blur` (``value`` is then the blur's sigma);
    :meth:`tensor` gives the ``[M, *S]`` baseline of a case.

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
        if self.kind == "blur" and not self.value > 0:
            raise ValueError(f"Baseline blur sigma must be > 0 (voxels), got {self.value!r}")

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
    def blur(cls, sigma: float = 3.0) -> "Baseline":
        """The input blurred by a Gaussian of standard deviation ``sigma`` voxels, inside the
        foreground only (normalised convolution: the background does not darken the edge).
        A removed region keeps its modality's local intensity level but loses its detail,
        so removing one modality's region does not make the others look abnormal."""
        return cls("blur", value=sigma)

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> "Baseline":
        """``"zeros"``, ``"gaussian"``, ``"blur"`` / ``"blur:SIGMA"`` or a number (constant), as on
        the command line."""
        if text == "blur" or text.startswith("blur:"):
            try:
                return cls.blur(float(text[5:]) if text != "blur" else 3.0)
            except ValueError:
                raise ValueError(f"baseline blur must be 'blur' or 'blur:SIGMA' with SIGMA > 0, got {text!r}") from None
        if text in ("zeros", "gaussian"):
            return cls.zeros() if text == "zeros" else cls.gaussian(seed)
        try:
            return cls.constant(float(text))
        except ValueError:
            raise ValueError(f"baseline must be 'zeros', 'gaussian', 'blur[:SIGMA]' or a number, got {text!r}") from None

    def describe(self) -> str:
        return {"zeros": "zeros", "constant": f"constant {self.value:g}",
                "gaussian": f"gaussian (seed {self.seed})",
                "blur": f"blur (Gaussian, sigma {self.value:g} voxels, inside the foreground)"}[self.kind]

    def tensor(self, case: Case) -> Tensor:
        """The baseline of ``case``: float32 ``[M, *S]`` on ``case.image``'s device."""
        image = case.image
        if self.kind == "zeros":
            return torch.zeros_like(image)
        if self.kind == "constant":
            return torch.full_like(image, float(self.value))
        if self.kind == "blur":
            return _blur(image, case.foreground, float(self.value))
        fg = case.foreground
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(image.shape, generator=generator, dtype=torch.float32)
        out = torch.empty_like(noise)
        for m in range(image.shape[0]):
            values = image[m].cpu().double()
            values = values[fg.cpu()] if fg is not None else values.reshape(-1)
            out[m] = noise[m] * float(values.std(unbiased=False)) + float(values.mean())
        return out.to(image.device)


def _blur(image: Tensor, foreground, sigma: float) -> Tensor:
    """Separable Gaussian blur (radius ``int(3 sigma + 0.5)``, scipy's) of every modality, averaging
    over ``foreground`` voxels only; the input itself outside them."""
    radius = int(3 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64, device=image.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    weight = (torch.ones(image.shape[1:], dtype=torch.bool, device=image.device) if foreground is None
              else foreground.to(image.device)).double()
    num, den = image.double() * weight, weight[None].clone()
    for axis in range(1, image.dim()):
        num, den = (_conv_along(t, axis, kernel, radius) for t in (num, den))
    inside = den > 0
    out = torch.where(inside, num / torch.where(inside, den, torch.ones_like(den)), image.double())
    return torch.where(weight.bool(), out, image.double()).to(image.dtype)


def _conv_along(t: Tensor, axis: int, kernel: Tensor, radius: int) -> Tensor:
    moved = t.movedim(axis, -1)
    flat = moved.reshape(-1, 1, moved.shape[-1])
    out = torch.nn.functional.conv1d(flat, kernel, padding=radius)
    return out.view(moved.shape).movedim(-1, axis)
