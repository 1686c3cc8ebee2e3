"""Where the student trains and in which precision: one decision, made once, testable.

:func:`choose_hardware` turns ``StudentConfig.device`` and ``StudentConfig.precision`` into
a :class:`Hardware` (device kind, the precision actually used, whether TF32 matmuls are
on). It asks torch what the machine has through a :class:`Probe`, so tests can stand in
for a CUDA machine without one.

- ``device = "auto"``: CUDA, then Apple MPS, then the CPU; ``"cpu"``, ``"cuda"``, ``"mps"``
  force one (a missing one is refused with the reason).
- ``precision = "auto"``: on CUDA bf16 where the GPU supports it (Ampere and later), else
  fp16 (trained with a gradient scaler); fp32 on MPS and the CPU. ``"bf16"``, ``"fp16"``
  and ``"fp32"`` force one; half precision off CUDA is refused.
- ``tf32 = true`` (the default) lets CUDA matmuls and convolutions use TF32 on GPUs that
  have it (Ampere and later); it changes nothing elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["Hardware", "Probe", "TorchProbe", "choose_hardware"]

DeviceKind = Literal["cpu", "cuda", "mps"]
PrecisionName = Literal["fp32", "bf16", "fp16"]


class Probe(Protocol):
    """What the machine has (the real answers come from :class:`TorchProbe`)."""

    def cuda(self) -> bool: ...
    def mps(self) -> bool: ...
    def bf16(self) -> bool:
        """Whether the CUDA device computes in bf16 natively."""
        ...

    def tf32(self) -> bool:
        """Whether the CUDA device has TF32 tensor cores (compute capability >= 8)."""
        ...


class TorchProbe:
    """:class:`Probe` answered by torch."""

    def cuda(self) -> bool:
        import torch

        return bool(torch.cuda.is_available())

    def mps(self) -> bool:
        import torch

        return bool(torch.backends.mps.is_available())

    def bf16(self) -> bool:
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())

    def tf32(self) -> bool:
        import torch

        if not torch.cuda.is_available():
            return False
        major, _ = torch.cuda.get_device_capability()
        return bool(major >= 8)


@dataclass(frozen=True, slots=True)
class Hardware:
    """The resolved device and precision of one training run."""

    device: DeviceKind
    precision: PrecisionName
    tf32: bool

    @property
    def scaler(self) -> bool:
        """Whether gradients need a loss scaler (fp16 only)."""
        return self.precision == "fp16"


def _device(name: str, probe: Probe) -> DeviceKind:
    if name == "auto":
        if probe.cuda():
            return "cuda"
        return "mps" if probe.mps() else "cpu"
    if name == "cuda" and not probe.cuda():
        raise ValueError("student.device = 'cuda', but torch sees no CUDA device")
    if name == "mps" and not probe.mps():
        raise ValueError("student.device = 'mps', but torch sees no Apple MPS device")
    if name not in ("cpu", "cuda", "mps"):
        raise ValueError(f"student.device must be auto, cpu, cuda or mps, got {name!r}")
    return name  # type: ignore[return-value]


def choose_hardware(
    device: str = "auto",
    precision: str = "auto",
    tf32: bool = True,
    probe: Probe | None = None,
) -> Hardware:
    """The device and precision a run uses, from the config's wishes and what the machine has."""
    probe = probe or TorchProbe()
    kind = _device(device, probe)
    if precision == "auto":
        chosen: PrecisionName = "fp32"
        if kind == "cuda":
            chosen = "bf16" if probe.bf16() else "fp16"
    elif precision in ("bf16", "fp16"):
        if kind != "cuda":
            raise ValueError(f"student.precision = {precision!r} needs CUDA; this run is on {kind}")
        if precision == "bf16" and not probe.bf16():
            raise ValueError("student.precision = 'bf16', but this GPU has no bf16: use fp16")
        chosen = precision  # type: ignore[assignment]
    elif precision == "fp32":
        chosen = "fp32"
    else:
        raise ValueError(f"student.precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    return Hardware(kind, chosen, tf32 and kind == "cuda" and probe.tf32())
