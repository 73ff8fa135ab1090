"""One table of common data-centre GPUs: compute capability, bf16, fp8, memory in MiB.

A site names its GPU from this table (``node.gpu_model: T4``) and gets memory and capability;
the planner resolves ``--dtype auto`` and flags quantisation kernels from the same entry.

Sources:

- Compute capability: NVIDIA's CUDA GPUs page (developer.nvidia.com/cuda-gpus) and the CUDA
  programming guide's compute-capability appendix (T4 7.5, V100 7.0, A10 8.6, L4/L40S 8.9,
  A100 8.0, H100/H200/GH200 9.0, B200 10.0). AMD GPUs report their gfx target through ROCm's
  torch (MI250X gfx90a -> 9.0, MI300X gfx942 -> 9.4); vLLM's ROCm platform does not compare
  them with NVIDIA's numbers.
- bf16: vLLM's ``CudaPlatformBase.supported_dtypes`` (``vllm/platforms/cuda.py``): bf16 from
  capability 8.0, float16 and float32 from 6.0; ROCm keeps the base ``Platform`` list
  (bf16, float16, float32). ``check_if_supports_dtype`` refuses an explicit bfloat16 below 8.0.
- fp8: hardware FP8 tensor cores from capability 8.9 (Ada, Hopper, Blackwell; vLLM's
  ``Fp8LinearMethod`` uses weight-only FP8 Marlin below 8.9) and on MI300X (fnuz FP8).
- Memory: ``memory.total`` as ``nvidia-smi`` prints it where it was measured (H200: 143771 MiB,
  tests/data/gpu-vllm/README.md); elsewhere the marketed size read as GiB (``80GB`` -> 81920
  MiB), the reading the issue asks for, within 1% of nvidia-smi. MI250X is counted per GCD
  (64 GiB; a card of 128 GB shows as two devices). ``measured`` says which.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model as vLLM sees one device."""

    name: str
    vendor: str  # "nvidia" or "amd"
    capability: tuple[int, int]
    bf16: bool
    fp8: bool
    memory_mib: int
    measured: bool = False  # memory from nvidia-smi (else the marketed size as GiB)
    aliases: tuple[str, ...] = ()

    @property
    def capability_text(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"

    @property
    def supported_dtypes(self) -> tuple[str, ...]:
        """vLLM's ``supported_dtypes`` for this device, preferred first."""
        if self.bf16:
            return ("bfloat16", "float16", "float32")
        return ("float16", "float32")


def _nv(name: str, cc: tuple[int, int], gib: int, *aliases: str, mib: int = 0) -> GpuSpec:
    fp8 = cc >= (8, 9)
    return GpuSpec(name, "nvidia", cc, cc >= (8, 0), fp8, mib or gib * 1024, bool(mib), aliases)


GPUS: tuple[GpuSpec, ...] = (
    _nv("T4", (7, 5), 16, "Tesla-T4"),
    _nv("V100-16GB", (7, 0), 16),
    _nv("V100-32GB", (7, 0), 32),
    _nv("A10", (8, 6), 24),
    _nv("L4", (8, 9), 24),
    _nv("L40S", (8, 9), 48),
    _nv("A100-40GB", (8, 0), 40, "A100-SXM4-40GB", "A100-PCIE-40GB"),
    # Leonardo's custom A100 with 64 GB HBM2e (CINECA's Leonardo pages, docs/sites-facts.md).
    _nv("A100-64GB", (8, 0), 64),
    _nv("A100-80GB", (8, 0), 80, "A100-SXM4-80GB", "A100-PCIE-80GB"),
    _nv("H100", (9, 0), 80, "H100-80GB", "H100-SXM", "H100-80GB-HBM3"),
    _nv("H200", (9, 0), 141, "H200-141GB", mib=143771),
    _nv("GH200", (9, 0), 96, "GH200-96GB"),
    _nv("B200", (10, 0), 180, "B200-180GB"),
    GpuSpec("MI250X", "amd", (9, 0), True, False, 64 * 1024),
    GpuSpec("MI300X", "amd", (9, 4), True, True, 192 * 1024),
)


def _key(name: str) -> str:
    """Case, spaces, ``_`` and a leading ``NVIDIA``/``AMD``/``Instinct`` do not matter."""
    key = re.sub(r"[\s_]+", "-", name.strip().lower())
    return re.sub(r"^(nvidia-|amd-)?(instinct-)?", "", key)


_BY_KEY: dict[str, GpuSpec] = {_key(a): g for g in GPUS for a in (g.name, *g.aliases)}


def gpu_spec(name: str) -> GpuSpec | None:
    """The table entry for ``name`` (``T4``, ``a100-40gb``, ``NVIDIA H100``), or None."""
    return _BY_KEY.get(_key(name))


def known_names() -> list[str]:
    return [g.name for g in GPUS]


def memory_mib(model: str, mib: int | None, gb: float | None) -> float | None:
    """Memory per GPU in MiB: ``gpu_memory_mib``, else ``gpu_memory_gb`` read as GiB (the
    marketed "80GB" is 80 GiB = 81920 MiB), else the table's entry; None when none says."""
    if mib is not None:
        return float(mib)
    if gb is not None:
        return gb * 1024
    spec = gpu_spec(model)
    return float(spec.memory_mib) if spec else None


# --------------------------------------------------------------------------- quantisation kernels

#: The least capability of each vLLM weight kernel (``get_min_capability`` of its quantization
#: config; Marlin from ``marlin_utils.query_marlin_supported_quant_types``: nothing below 7.5,
#: CUDA only). Older releases needed 8.0 for Marlin.
MARLIN_MIN = (7, 5)
KERNEL_MIN: dict[str, tuple[int, int]] = {"gptq": (6, 0), "awq": (7, 5)}


def kernel_notes(method: str, gpu: GpuSpec) -> list[str]:
    """What vLLM does with a ``method`` checkpoint on ``gpu``: a note per kernel it cannot run."""
    cc, marlin_ok = gpu.capability_text, gpu.vendor == "nvidia" and gpu.capability >= MARLIN_MIN
    notes: list[str] = []
    if method in ("gptq", "awq") and not marlin_ok:
        where = f"compute capability {cc}" if gpu.vendor == "nvidia" else "ROCm"
        notes.append(
            f"{gpu.name} ({where}) cannot run the {method.upper()}-Marlin kernel (needs NVIDIA "
            f"compute capability {MARLIN_MIN[0]}.{MARLIN_MIN[1]}); vLLM falls back to the "
            f"plain {method} kernel"
        )
        need = KERNEL_MIN[method]
        if gpu.vendor == "nvidia" and gpu.capability < need:
            notes.append(
                f"{gpu.name} (compute capability {cc}) cannot run {method} at all "
                f"(vLLM needs {need[0]}.{need[1]}): pick another checkpoint or GPU"
            )
    if method == "fp8" and not gpu.fp8:
        if marlin_ok:
            notes.append(
                f"{gpu.name} (compute capability {cc}) has no FP8 tensor cores: vLLM runs the "
                "FP8 weights through the weight-only FP8 Marlin kernel"
            )
        else:
            notes.append(f"{gpu.name} ({cc}) can run neither FP8 nor FP8-Marlin kernels")
    return notes
