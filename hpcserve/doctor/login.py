"""Step 2, on the login node through the executor ``submit`` uses: the scheduler's commands,
``sbatch --test-only`` of the real launcher, the site's module lines, the runtime with vLLM
and its version, the HF cache.

Each check runs the launcher's own pieces: :func:`hpcserve.launch.render.module_script` (its
``module load`` lines), :func:`hpcserve.launch.render.runtime_command` (its runtime, venv or
image) and the rendered probe launcher for ``sbatch --test-only``.
"""

from __future__ import annotations

import json
import re

from hpcserve.cluster.executor import CommandResult, Executor
from hpcserve.cluster.slurm import Slurm
from hpcserve.doctor.checks import Check, failed, passed, skipped
from hpcserve.errors import HpcserveError
from hpcserve.launch.render import module_script, path_word, runtime_command, shell_word
from hpcserve.sites.schema import Site

LOGIN = "login node"
SCHEDULER = "scheduler commands"
TEST_ONLY = "sbatch --test-only"
MODULES = "module lines"
RUNTIME = "vLLM runtime"
HF_CACHE = "HF cache"

SLURM_COMMANDS = ("sbatch", "squeue", "scancel")
# What the runtime's python prints: the installed vllm and torch releases (None: not there).
VERSIONS_CODE = (
    "import json\n"
    "from importlib import metadata\n"
    "def version(name):\n"
    "    try:\n"
    "        return metadata.version(name)\n"
    "    except Exception:\n"
    "        return None\n"
    'print(json.dumps({"vllm": version("vllm"), "torch": version("torch")}))\n'
)
_MODULE_ERROR = re.compile(
    r"Lmod has detected the following error|^ERROR:|module: command not found"
)


def bash(executor: Executor, script: str, timeout: float = 120) -> CommandResult:
    """``bash -c SCRIPT`` where the scheduler is (a non-login shell, like the batch step)."""
    return executor.run(["bash", "-c", script], timeout=timeout)


def _last_line(res: CommandResult) -> str:
    lines = (res.stderr.strip() or res.stdout.strip()).splitlines()
    return lines[-1] if lines else f"exit status {res.returncode}"


def login_check(executor: Executor) -> Check:
    """The login node answers (SSH connects, host key verified) or this machine runs here."""
    try:
        res = executor.run(["hostname"], timeout=60)
    except HpcserveError as e:
        return failed(
            LOGIN,
            str(e),
            "check the site's login host, port, user and key: `ssh -p PORT USER@HOST` by hand",
        )
    where = executor.describe()
    return passed(LOGIN, f"{where} answers (hostname {res.stdout.strip() or '?'})", where=where)


def scheduler_check(executor: Executor) -> Check:
    """sbatch, squeue and scancel are on PATH where ``submit`` runs them."""
    script = (
        f"for c in {' '.join(SLURM_COMMANDS)}; do "
        'command -v "$c" >/dev/null 2>&1 || printf "%s\\n" "$c"; done'
    )
    res = bash(executor, script, timeout=60)
    missing = [w for w in res.stdout.split() if w in SLURM_COMMANDS]
    if not res.ok or missing:
        return failed(
            SCHEDULER,
            f"{', '.join(missing) or 'the check'} not found on PATH on {executor.describe()}",
            "run doctor against the host that has SLURM's commands (the site's login section, "
            "scheduler.submit), or put them on PATH in your shell startup there",
        )
    return passed(SCHEDULER, f"{', '.join(SLURM_COMMANDS)} found on {executor.describe()}")


# sbatch's refusal -> the fix (slurm/src/common/slurm_errno.c messages).
_TEST_ONLY_FIXES = (
    (
        "account",
        "set scheduler.account (--account) to a project you belong to: "
        "`sacctmgr show assoc user=$USER format=account,partition,qos` lists yours",
    ),
    ("partition", "set scheduler.partition (--partition) to one `sinfo -s` lists"),
    ("qos", "set scheduler.qos (--qos) to one `sacctmgr show assoc user=$USER format=qos` lists"),
    (
        "time limit",
        "shorten scheduler.time: `sinfo -o '%P %l'` shows each partition's limit",
    ),
    (
        "node configuration",
        "the request asks for more than a node has: check node.gpus, "
        "scheduler.gpus_directive, constraint and --nodes against `sinfo -o '%P %D %c %m %G'`",
    ),
)


def test_only_fix(message: str) -> str:
    """The fix for an ``sbatch --test-only`` refusal, from the words of sbatch's error."""
    low = message.lower()
    for word, fix in _TEST_ONLY_FIXES:
        if word in low:
            return fix
    return (
        "correct the site's scheduler section (account, partition, qos, constraint, "
        "extra_sbatch) as sbatch's error says"
    )


def test_only_check(executor: Executor, script: str) -> Check:
    """The scheduler accepts the launcher's request (``sbatch --test-only``), without a job."""
    try:
        answer = Slurm(executor, timeout_s=120).test_only(script)
    except HpcserveError as e:
        return failed(TEST_ONLY, str(e), test_only_fix(str(e)))
    return passed(TEST_ONLY, answer)


def modules_check(site: Site, executor: Executor) -> Check:
    """The site's ``module load`` lines, as the launcher runs them (``set -euo pipefail``)."""
    lines = module_script(site)
    if not lines:
        return skipped(MODULES, "the site loads no modules")
    res = bash(executor, "set -euo pipefail\n" + "\n".join(lines) + "\n", timeout=120)
    text = f"{res.stderr}\n{res.stdout}"
    bad = [ln.strip() for ln in text.splitlines() if _MODULE_ERROR.search(ln.strip())]
    if not res.ok or bad:
        where = "" if res.ok else f" (exit status {res.returncode})"
        return failed(
            MODULES,
            f"`module load` of {site.modules} failed on {executor.describe()}{where}: "
            + (bad[0] if bad else _last_line(res)),
            "correct the site's modules list: `module spider NAME` (Lmod) or "
            "`module avail NAME` on the login node shows what exists",
        )
    return passed(MODULES, f"loaded: {'; '.join(site.modules)}")


def _runtime_exists(site: Site) -> str:
    """bash that exits 3 (no venv), 4 (no vllm in it) 5 (no runtime) or 6 (no image)."""
    c = site.container
    if c.runtime == "none" and c.venv:
        venv = shell_word(path_word(c.venv))
        vllm = shell_word(runtime_command(site, on_node=False)[0][0])
        return f"[[ -d {venv} ]] || exit 3\n[[ -x {vllm} ]] || exit 4\n"
    if c.runtime == "none":
        return f"command -v {shell_word(site.engine.vllm)} >/dev/null || exit 4\n"
    image = shell_word(path_word(c.image or ""))
    return f"command -v {shell_word(c.runtime)} >/dev/null || exit 5\n[[ -f {image} ]] || exit 6\n"


def _runtime_failure(site: Site, res: CommandResult) -> Check:
    c = site.container
    venv_fix = (
        "set container.venv (--venv) to a venv that holds vLLM, e.g. "
        "`python3 -m venv DIR && DIR/bin/pip install vllm`"
    )
    known = {
        3: (f"the venv {c.venv} does not exist", venv_fix),
        4: (f"no {site.engine.vllm} in {c.venv or 'PATH'}", venv_fix),
        5: (
            f"{c.runtime} is not on PATH after the module lines",
            f"add the module that provides {c.runtime} to the site's modules",
        ),
        6: (
            f"the image {c.image} does not exist",
            "pull it on the login node (`apptainer pull vllm.sif docker://vllm/vllm-openai:TAG`) "
            "and set container.image (--image) to its path",
        ),
    }
    detail, fix = known.get(
        res.returncode,
        (
            f"the runtime's python could not run: {_last_line(res)}",
            "check the image or venv: its python3 must start",
        ),
    )
    return failed(RUNTIME, detail, fix)


def runtime_check(site: Site, executor: Executor) -> Check:
    """The runtime and image, or the venv, exist and hold vLLM; which vLLM release."""
    words, _ = runtime_command(site, "python3", on_node=False)
    script = (
        "set -euo pipefail\n"
        + "".join(line + "\n" for line in module_script(site))
        + _runtime_exists(site)
        + " ".join(shell_word(w) for w in words)
        + " -c "
        + shell_word(VERSIONS_CODE)
        + "\n"
    )
    res = bash(executor, script, timeout=300)
    if not res.ok:
        return _runtime_failure(site, res)
    try:
        versions = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        versions = {}
    where = site.container.image if site.container.runtime != "none" else site.container.venv
    if not versions.get("vllm"):
        return failed(
            RUNTIME,
            f"vllm is not installed in {where or 'the python on PATH'}",
            "install vLLM there, or point container.venv / container.image at one that has it",
        )
    note = ""
    want = site.engine.vllm_version
    if want and want != versions["vllm"]:
        note = f" (the site says {want}: set engine.vllm_version so `plan` sizes for this one)"
    return passed(
        RUNTIME,
        f"vLLM {versions['vllm']}, torch {versions.get('torch') or 'none'} in "
        f"{where or 'the python on PATH'}{note}",
        **versions,
    )


def hf_cache_check(site: Site, executor: Executor, model: str | None) -> Check:
    """The HF cache exists and is writable; holds ``model`` when compute nodes are offline."""
    from hpcserve.launch.submit import offline_cache_warning

    cache = site.storage.hf_cache
    if not cache:
        return skipped(HF_CACHE, "no storage.hf_cache: vLLM uses ~/.cache/huggingface on the nodes")
    d = shell_word(path_word(cache))
    res = bash(executor, f"[[ -d {d} ]] || exit 3\n[[ -w {d} ]] || exit 4\n", timeout=60)
    if res.returncode == 3:
        return failed(HF_CACHE, f"{cache} does not exist", f"create it: `mkdir -p {cache}`")
    if not res.ok:
        return failed(
            HF_CACHE,
            f"{cache} is not writable",
            "make it writable for you, or set storage.hf_cache",
        )
    if not model:
        return passed(HF_CACHE, f"{cache} exists and is writable (no --model to look for)")
    if not site.storage.offline:
        return passed(
            HF_CACHE, f"{cache} exists and is writable; nodes are online: vLLM fetches {model}"
        )
    warning = offline_cache_warning(site, model, executor, executor.home())
    if warning:
        return failed(HF_CACHE, warning, f"`hpcserve download {model} --site {site.name}`")
    return passed(HF_CACHE, f"{cache} exists, is writable and holds {model}")
