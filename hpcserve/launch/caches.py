"""Where a site's jobs keep what one job can hand to the next: vLLM's compilation cache on the
shared filesystem and the model copied to node-local disk (pure; the launcher uses the paths).

vLLM 0.26.0 keys its caches itself, so one directory serves every model and layout:

* ``VLLM_CACHE_ROOT`` (``vllm/envs.py``, default ``~/.cache/vllm``) holds
  ``torch_compile_cache/<hash>/rank_<rank>_<dp rank>/<prefix>`` (``compilation/backends.py``)
  and, with torch >= 2.10 (``VLLM_USE_AOT_COMPILE`` on by default),
  ``torch_compile_cache/torch_aot_compile/<hash>/rank_<rank>_<dp rank>/model``
  (``compilation/decorators.py``). The hash covers the vLLM version, the model config
  (its path included: ``ModelConfig.compute_hash`` ignores only the tokenizer, seed, served
  name and similar), the cache, parallel (TP/PP/DP sizes), scheduler, compilation and device
  configs, the ``VLLM_*`` environment except the variables ``envs.compile_factors`` ignores
  (``VLLM_CACHE_ROOT``, ``VLLM_HOST_IP``, ports, logging) and, for the backbone cache, the
  traced source files. Each rank has its own subdirectory, so the nodes of one job (and two
  jobs at once: artefacts are written to a temporary file and renamed) do not collide.
* ``TRITON_CACHE_DIR`` (Triton's own, default ``~/.triton/cache``) holds the Triton kernels
  vLLM compiles outside torch.compile and their autotuning results
  (``vllm/env_override.py`` sets ``TRITON_CACHE_AUTOTUNING=1``); Triton keys them on its version,
  the GPU target and the kernel source.

The directory is further split per vLLM version (``vllm-<engine.vllm_version>``) only so that
an old version's cache can be deleted as a whole; vLLM would not mix them anyway.
"""

from __future__ import annotations

import hashlib
import posixpath
import re

from hpcserve.sites.schema import Site

CACHE_LEAF = "vllm-cache"  # under storage.workdir when compile_cache_dir is unset
STAGE_LEAF = "hpcserve-models"  # under storage.stage_dir
STAGED_MARK = ".hpcserve-staged"  # in a staged copy: the source directory it was copied from


def compile_cache_root(site: Site) -> str | None:
    """The directory every node of ``site`` gives vLLM as ``VLLM_CACHE_ROOT``, or None when the
    site turns the shared cache off (``storage.compile_cache: false``). May start with ``~``."""
    storage = site.storage
    if not storage.compile_cache:
        return None
    base = storage.compile_cache_dir or posixpath.join(storage.workdir, CACHE_LEAF)
    version = site.engine.vllm_version or "any"
    return posixpath.join(base.rstrip("/") or "/", f"vllm-{version}")


def cache_env(site: Site) -> list[tuple[str, str]]:
    """The environment that points vLLM and Triton at the shared cache ([] when off)."""
    root = compile_cache_root(site)
    if root is None:
        return []
    return [("VLLM_CACHE_ROOT", root), ("TRITON_CACHE_DIR", posixpath.join(root, "triton"))]


def staged_model_dir(site: Site, model: str, revision: str | None = None) -> str | None:
    """Where each node keeps its copy of ``model`` (a directory or a hub id, at ``revision``),
    or None when the site stages nothing (``storage.stage_dir`` unset).

    The path depends only on the model and revision, never on the job: vLLM's compilation
    cache is keyed on the model path, so the next job must serve the same path to hit it.
    """
    stage = site.storage.stage_dir
    if not stage:
        return None
    key = model if revision is None else f"{model}@{revision}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    leaf = re.sub(r"[^A-Za-z0-9._-]+", "_", posixpath.basename(model.rstrip("/"))).strip("._")
    leaf = leaf or "model"
    return posixpath.join(stage.rstrip("/") or "/", STAGE_LEAF, f"{leaf}-{digest}")
