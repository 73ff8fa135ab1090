"""Prepare (here, with network) what the GPU machine needs to run vLLM: no registry there.

1. `pip download --no-deps` the vllm wheel (cp312-compatible manylinux x86_64),
2. strip it (FA2 kernels, the vllm-rs binary, deep_gemm builds for other Pythons) into a zip
   that is extracted onto PYTHONPATH there,
3. resolve its missing dependencies against the GPU image's `pip freeze`
   (tests/gpu/image-pip-freeze.txt) and download them as cp312 manylinux wheels,
4. pack stripped zip + wheels into one tar and split it into pieces that fit one device call.

    python3 tests/gpu/prepare_vllm_bundle.py --out /work/main/.gpu/vllm --work /tmp/vllm-dl
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

VLLM = "vllm==0.26.0"
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_34_x86_64",
    "manylinux_2_35_x86_64",
    "manylinux1_x86_64",
]
# Never carried: in the image already (torch stack), or heavy GPU extras that the tiny-model
# run does not import (flashinfer is replaced by VLLM_USE_FLASHINFER_SAMPLER=0).
SKIP = {
    "torch",
    "torchaudio",
    "torchvision",
    "triton",
    "numpy",
    "numba",
    "llvmlite",
    "flashinfer-python",
    "flashinfer-cubin",
    "tilelang",
    "torchcodec",
    "pynvvideocodec",
    "nvidia-cutlass-dsl",
    "quack-kernels",
    "tokenspeed-mla",
    "humming-kernels",
    "fastsafetensors",
    "nvidia-cudnn-frontend",
    "setuptools",
    "opencv-python-headless",
    "cupy-cuda13x",
}
# vllm 0.26.0 pins apache-tvm-ffi==0.1.10, but xgrammar 0.2.8 (imported at start-up) needs
# >=0.1.11: with 0.1.10 the server dies with `TypeError: load_lib_module() got an unexpected
# keyword argument 'extra_lib_paths'` (seen on the GPU machine, 2026-11-22). This one works.
OVERRIDES = {"apache-tvm-ffi": "apache-tvm-ffi==0.1.15.post2"}
STRIP = re.compile(
    r"^vllm/(vllm_flash_attn/_vllm_fa2_C\.abi3\.so|vllm-rs$|"
    r"third_party/deep_gemm/_C\.cpython-3(?!12)\d+-x86_64-linux-gnu\.so)"
)
ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(freeze: Path) -> dict[str, Version]:
    out = {}
    for line in freeze.read_text().splitlines():
        if "==" in line:
            name, ver = line.split("==", 1)
            out[norm(name)] = Version(ver)
    return out


def requirements(wheel: Path, extras: set[str]) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        lines = z.read(meta).decode().splitlines()
    reqs = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None:
            envs = [dict(ENV, extra=e) for e in (extras or {""})] + [dict(ENV, extra="")]
            if not any(Marker(str(req.marker)).evaluate(env) for env in envs):
                continue
        reqs.append(req)
    return reqs


def pip_download(specs: list[str], dest: Path) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "-q",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "-d",
        str(dest),
    ]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + specs, check=True)


def wheel_name(path: Path) -> str:
    return norm(path.name.split("-")[0])


def strip_vllm(work: Path) -> tuple[Path, Path]:
    """vLLM's wheel (downloaded once into ``work``) and a copy without what the GPU runs skip."""
    vllm_whl = next(work.glob("vllm-*.whl"), None)
    if vllm_whl is None:
        pip_download([VLLM], work)
        vllm_whl = next(work.glob("vllm-*.whl"))
    stripped = work / "vllm-stripped.zip"
    with (
        zipfile.ZipFile(vllm_whl) as src,
        zipfile.ZipFile(stripped, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as dst,
    ):
        for info in src.infolist():
            if not STRIP.match(info.filename):
                dst.writestr(info, src.read(info), compresslevel=9)
    print(f"stripped vllm: {stripped.stat().st_size / 1e6:.1f} MB")
    return vllm_whl, stripped


def _wanted(
    queue: list[tuple[Requirement, str]],
    image: dict[str, Version],
    seen: set[str],
    notes: list[str],
) -> tuple[dict[str, str], dict[str, set[str]]]:
    """The requirements of one round that the image lacks (name -> spec) and their extras."""
    todo: dict[str, str] = {}
    extras_of: dict[str, set[str]] = {}
    for req, parent in queue:
        name = norm(req.name)
        extras_of.setdefault(name, set()).update(req.extras)
        if name in SKIP or name in seen or name in todo:
            continue
        if name in image:
            if not req.specifier.contains(image[name], prereleases=True):
                notes.append(f"image has {name} {image[name]}, {parent} wants {req}")
            continue
        todo[name] = OVERRIDES.get(name, f"{req.name}{req.specifier}")
    return todo, extras_of


def download_closure(vllm_whl: Path, wheels: Path, image: dict[str, Version]) -> list[str]:
    """Download every wheel vLLM needs beyond the image, round by round; notes on version
    clashes with the image."""
    seen: set[str] = set()
    queue: list[tuple[Requirement, str]] = [(r, "vllm") for r in requirements(vllm_whl, set())]
    notes: list[str] = []
    while queue:
        todo, extras_of = _wanted(queue, image, seen, notes)
        queue = []
        if not todo:
            break
        have = {wheel_name(p) for p in wheels.glob("*.whl")}
        missing = [spec for name, spec in todo.items() if name not in have]
        if missing:
            pip_download(missing, wheels)
        seen.update(todo)
        for whl in wheels.glob("*.whl"):
            name = wheel_name(whl)
            if name in todo:
                queue += [(r, name) for r in requirements(whl, extras_of.get(name, set()))]
    return notes


def pack(stripped: Path, wheels: Path, work: Path, out: Path, piece_mb: int) -> None:
    """One tar of the stripped vLLM and the wheels, split into pieces with a checksum."""
    tar_path = work / "vllm-bundle.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(stripped, arcname="vllm-stripped.zip")
        for whl in sorted(wheels.glob("*.whl")):
            tar.add(whl, arcname=f"wheels/{whl.name}")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("bundle.part*"):
        old.unlink()
    subprocess.run(
        ["split", "-b", f"{piece_mb}M", "-d", str(tar_path), str(out / "bundle.part")],
        check=True,
    )
    subprocess.run(
        f"cd {out} && sha256sum {tar_path} | sed 's|  .*/|  |' > bundle.sha256 && ls -la",
        shell=True,
        check=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True, help="where the pieces go")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--freeze", type=Path, default=Path(__file__).with_name("image-pip-freeze.txt"))
    ap.add_argument("--piece-mb", type=int, default=58)
    args = ap.parse_args()
    work, wheels = args.work, args.work / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    vllm_whl, stripped = strip_vllm(work)
    notes = download_closure(vllm_whl, wheels, image_packages(args.freeze))
    total = sum(p.stat().st_size for p in wheels.glob("*.whl"))
    print(f"{len(list(wheels.glob('*.whl')))} wheels, {total / 1e6:.1f} MB")
    print("\n".join(notes))
    pack(stripped, wheels, work, args.out, args.piece_mb)


if __name__ == "__main__":
    main()
