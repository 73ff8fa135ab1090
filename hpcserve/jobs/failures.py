"""Why a vLLM job failed, recognised from its log lines, with the line and a suggestion (pure).

Each :class:`Rule` is a regular expression written against a real line (from vLLM, Hugging Face
Hub, PyTorch/NCCL or SLURM source, or a real run; ``tests/data/vllm-lines/README.md`` names the
origin of each). Rules are listed most specific first: when several match, the earlier rule is
the root cause (an out-of-memory on a worker is what killed the NCCL peers on the head, and the
engine-core wrapper error is reported only when nothing more precise was found).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

# vLLM prefixes: "(EngineCore_DP0 pid=164) ERROR 03-19 11:07:19 [core.py:1006] "
_PREFIX = re.compile(
    r"^\s*(?:\([\w.-]+ pid=\d+\)\s*)?(?:(?:INFO|WARNING|ERROR|DEBUG|CRITICAL)\s+"
    r"\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?\s+\[[^\]]*\]\s*)?"
)
_NODE_LOG = re.compile(r"node-(\d+)\.log$")


@dataclass(frozen=True)
class Rule:
    """One recognisable failure cause."""

    cause: str  # short key, stable for --json and tests
    title: str  # what happened, in words
    pattern: re.Pattern[str]
    suggestion: str  # may use {0}, {1}... from the pattern's groups


@dataclass(frozen=True)
class Failure:
    """A recognised cause, the log line that shows it, and where it came from."""

    cause: str
    title: str
    line: str
    suggestion: str
    source: str | None = None  # log file name, e.g. node-1.log
    node: int | None = None  # node rank when known (from the log name or srun's task number)
    host: str | None = None  # node host name when the line names it

    def describe(self) -> str:
        where = ""
        if self.node is not None:
            where = f" on node {self.node}" + (f" ({self.host})" if self.host else "")
        elif self.host:
            where = f" on {self.host}"
        return f"{self.title}{where}: {self.line}\n  hint: {self.suggestion}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _r(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


RULES: tuple[Rule, ...] = (
    Rule(
        "kv_cache_too_small",
        "not enough GPU memory left for the KV cache",
        _r(
            r"No available memory for the cache blocks|larger than the available KV cache memory"
            r"|To serve at least one request with the models's max seq len"
            r"|Cannot auto-fit max_model_len: not enough GPU memory"
            r"|on kv cache allocation is less than requested memory for kv"
        ),
        "lower --max-model-len, raise --gpu-memory-utilization, or spread the model over "
        "more nodes/GPUs (`hpcserve plan` sizes it)",
    ),
    Rule(
        "gpu_oom",
        "CUDA out of memory",
        _r(r"(?:torch\.(?:cuda\.)?OutOfMemoryError|CUDA out of memory|CUDA error: out of memory)"),
        "the weights or activations do not fit: use more nodes (PP) or GPUs (TP), a quantized "
        "model, a smaller --max-num-seqs/--max-model-len, or --enforce-eager",
    ),
    Rule(
        "cpu_oom",
        "out of host memory (killed by the memory limit)",
        _r(
            r"oom[_-]kill event|task \d+: Out Of Memory|Some of the step tasks have been OOM Killed"
            r"|exceeded memory limit|Cannot allocate memory"
        ),
        "the node ran out of RAM: ask for more with --mem (or whole nodes), lower "
        "VLLM_CPU_KVCACHE_SPACE on CPU builds, or load fewer shards at once",
    ),
    Rule(
        "layout_heads",
        "tensor-parallel size does not divide the attention heads",
        _r(
            r"Total number of attention heads \((\d+)\) must be divisible by tensor parallel "
            r"size \((\d+)\)"
        ),
        "the model has {0} attention heads; choose a TP size (GPUs per node) that divides "
        "{0}, not {1}",
    ),
    Rule(
        "layout_pp",
        "the model cannot be split into pipeline stages",
        _r(
            r"Pipeline parallelism is not supported for this model"
            r"|must be divisible by pipeline parallel size|num_hidden_layers.*pipeline"
        ),
        "this model cannot run with PP > 1 across nodes: use one node (TP only), or a model "
        "that implements SupportsPP",
    ),
    Rule(
        "unsupported_arch",
        "vLLM does not know this model architecture",
        _r(
            r"Model architectures? (\[[^\]]*\]) (?:are|is) not supported"
            r"|Model architectures? (\[[^\]]*\]) failed to be inspected"
        ),
        "the vLLM in the container is too old (or too new) for this model: use a newer "
        "vLLM image, or check the model's `architectures` in config.json",
    ),
    Rule(
        "broken_install",
        "vLLM's Python environment is broken (a package is missing or mismatched)",
        _r(
            r"^\s*(?:ModuleNotFoundError|ImportError): "
            r"|^\s*TypeError: \S+\(\) got an unexpected keyword argument"
        ),
        "the vLLM install on the cluster (container image or venv) lacks a package or has one "
        "of the wrong version: rebuild or pull the image, or pin the package the line names",
    ),
    Rule(
        "model_gated",
        "the model is gated and the token may not read it",
        _r(
            r"GatedRepoError|Cannot access gated repo|Access to model \S+ is restricted"
            r"|403 Client Error"
        ),
        "accept the model's licence on huggingface.co and submit with an HF token that has "
        "access to it",
    ),
    Rule(
        "model_not_found",
        "the model was not found",
        _r(
            r"Repository Not Found|RepositoryNotFoundError"
            r"|Invalid repository ID or local directory specified"
            r"|is not a local folder and is not a valid model identifier"
            r"|(?:401|404) Client Error|No such file or directory: '[^']*config\.json'"
            r"|HFValidationError: Repo id must be in the form"
        ),
        "check the model name or path (on the cluster: a local path must hold config.json); "
        "a private repo needs an HF token",
    ),
    Rule(
        "offline_download",
        "the compute node cannot reach huggingface.co to fetch the model",
        _r(
            r"LocalEntryNotFoundError|We couldn't connect to 'https://huggingface\.co'"
            r"|outgoing traffic has been disabled|Failed to resolve 'huggingface\.co'"
            r"|Cannot find an appropriate cached snapshot folder"
            r"|Max retries exceeded with url: /api/models"
        ),
        "compute nodes are offline: download the model first on the login node "
        "(`hpcserve download MODEL --site SITE`) into the site's shared HF cache",
    ),
    Rule(
        "port_in_use",
        "a port was already in use on the node",
        _r(r"Address already in use|\[Errno 98\]|errno: 98"),
        "another job on the node holds the API or torch master port: resubmit (the launcher "
        "probes free ports), or set a different engine.port for the site",
    ),
    Rule(
        "nccl",
        "NCCL communication failed between GPUs/nodes",
        _r(
            r"NCCL error|nccl(?:System|Internal|InvalidUsage|UnhandledCuda|Remote)Error"
            r"|Watchdog caught collective operation timeout|DistNetworkError"
            r"|NCCL communicator was aborted"
        ),
        "check the node interconnect: `hpcserve nccl JOB` reads the NCCL logs; set the site's "
        "network.nccl_socket_ifname / nccl_ib_hca, or NCCL_IB_DISABLE=1 to test over sockets",
    ),
    Rule(
        "time_limit",
        "the job reached its wall-time limit",
        _r(r"CANCELLED AT \S+ DUE TO TIME LIMIT|DUE TO TIME LIMIT"),
        "submit with a longer --time (the site's scheduler.time is the default)",
    ),
    Rule(
        "node_failure",
        "SLURM lost a node",
        _r(r"srun: error: Node failure on (\S+)|DUE TO NODE FAILURE"),
        "a node failed under the job: resubmit; if it repeats, exclude the node (--exclude)",
    ),
    Rule(
        "process_died",
        "a node's vLLM process died",
        _r(
            r"srun: error: (\S+): tasks? ([\d,-]+): (?:Exited with exit code \d+|Killed"
            r"|Terminated|Segmentation fault)"
            r"|Worker proc \S+ died unexpectedly|EngineCore encountered a fatal error"
            r"|EngineDeadError"
            r"|Engine core initialization failed|Engine process failed to start"
        ),
        "read that node's log above the error (`hpcserve logs JOB --node K`) for the first "
        "traceback",
    ),
)

_BY_CAUSE = {r.cause: r for r in RULES}
_NAMES_HOST = ("process_died", "node_failure")  # rules whose first group is the node's host
_ORDER = {r.cause: i for i, r in enumerate(RULES)}


def strip_prefix(line: str) -> str:
    """A log line without vLLM's process/level/time/file prefix, trimmed to 400 chars."""
    text = _PREFIX.sub("", line.rstrip("\n")).strip()
    return text if len(text) <= 400 else text[:397] + "..."


def node_of_source(source: str | None) -> int | None:
    """Node rank from a log file name like ``node-2.log``."""
    if source:
        m = _NODE_LOG.search(source)
        if m:
            return int(m.group(1))
    return None


def _suggest(rule: Rule, m: re.Match[str]) -> str:
    groups = [g for g in m.groups() if g is not None]
    try:
        return rule.suggestion.format(*groups)
    except (IndexError, KeyError):
        return rule.suggestion


def scan(lines: Iterable[str], source: str | None = None) -> list[Failure]:
    """Every rule that matches, once each (its first line), in rule order."""
    node = node_of_source(source)
    found: dict[str, Failure] = {}
    for line in lines:
        for rule in RULES:
            known = found.get(rule.cause)
            if known is not None and (known.host or rule.cause != "node_failure"):
                continue  # a node failure without a host gives way to srun's line naming it
            m = rule.pattern.search(line)
            if not m or (known is not None and not m.group(1)):
                continue
            f_node, host = node, m.group(1) if rule.cause in _NAMES_HOST else None
            if rule.cause == "process_died" and m.group(2) and m.group(2).isdigit():
                f_node = int(m.group(2))  # one task per node: task K is node K
            found[rule.cause] = Failure(
                rule.cause, rule.title, strip_prefix(line), _suggest(rule, m), source, f_node, host
            )
    return [found[r.cause] for r in RULES if r.cause in found]


def diagnose(logs: Mapping[str, Iterable[str]]) -> Failure | None:
    """The most specific cause over all of a job's logs (name -> lines), or None.

    Ties between logs go to the first log given (pass node logs head first, batch log last).
    """
    best: Failure | None = None
    for source, lines in logs.items():
        for f in scan(lines, source):
            if best is None or rank(f) < rank(best):
                best = f
    return best


def rank(f: Failure) -> tuple[int, int]:
    """Sort key, most telling first: rule order, then (same rule) a line that names the host,
    like srun's "NODE: task K: Exited", before a generic one from the head's log."""
    return (_ORDER[f.cause], 0 if f.host else 1)


def rule(cause: str) -> Rule:
    """The rule for ``cause`` (KeyError if unknown)."""
    return _BY_CAUSE[cause]
