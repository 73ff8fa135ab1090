"""Every `vllm serve` flag hpcserve knows, in one table.

Like vLLM's own ``engine/arg_utils.py``, one table drives everything: the click options of
``hpcserve render`` / ``submit`` and ``plan`` (:func:`click_options`), the bounds and choices of
their values (:func:`check_values`, for every command and the Python API alike), the ``vllm serve``
argv the launcher runs (:func:`flag_argv`), and the reference page ``docs/vllm-flags.md``
(:func:`markdown`; a test keeps it in sync). Add a row here and all of them follow.

Spellings and semantics were read from vLLM's source (``source`` column):

* ``vllm/engine/arg_utils.py`` registers ``--tensor-parallel-size/-tp``,
  ``--pipeline-parallel-size/-pp``, ``--master-addr``, ``--master-port``, ``--nnodes/-n`` and
  ``--node-rank/-r`` from ``ParallelConfig`` (``vllm/config/parallel.py``: master_addr default
  127.0.0.1, master_port 29501, nnodes 1, node_rank 0; on CUDA ``nnodes > 1`` selects the ``mp``
  executor). Boolean config fields become ``argparse.BooleanOptionalAction`` (``--x`` and
  ``--no-x``).
* ``vllm/entrypoints/openai/cli_args.py`` (``make_arg_parser``) adds ``--headless``
  (``store_true``, no ``--no-`` form), ``--host``, ``--port`` (default 8000) and ``--api-key``.
* ``vllm/entrypoints/cli/serve.py``: ``--headless`` sets ``api_server_count = 0`` and, for
  ``node_rank_within_dp > 0``, runs only the multiproc workers that join the head's
  ``torch.distributed`` group at ``master_addr:master_port`` ("headless workers for multi-node
  PP/TP").
* The API server reads its key from ``VLLM_API_KEY`` when ``--api-key`` is absent
  (``vllm/envs.py`` ``"VLLM_API_KEY"``; ``vllm/entrypoints/serve/middleware/register.py``
  ``args.api_key or [envs.VLLM_API_KEY]``), so hpcserve never puts ``--api-key`` on a command line.
* Data parallelism (``docs/serving/data_parallel_deployment.md``; ``arg_utils.py`` registers
  ``--data-parallel-size/-dp``, ``--data-parallel-size-local/-dpl``,
  ``--data-parallel-start-rank/-dpr``, ``--data-parallel-address/-dpa``,
  ``--data-parallel-rpc-port/-dpp`` and ``--enable-expert-parallel`` from ``ParallelConfig``):
  the head runs the API server with ``--data-parallel-size N --data-parallel-size-local L
  --data-parallel-address HEAD --data-parallel-rpc-port P``, every other node the same with
  ``--headless --data-parallel-start-rank K``. ``--data-parallel-rank`` and the hybrid/external
  load-balancing modes are another deployment and are refused in ``--vllm-arg``.
* Bounds: ``CacheConfig.gpu_memory_utilization`` is ``Field(gt=0, le=1)``
  (``vllm/config/cache.py``); ``--dtype`` and ``--kv-cache-dtype`` choices are
  :data:`hpcserve.rules.DTYPES` and :data:`hpcserve.rules.KV_CACHE_DTYPES`; sizes and counts are at
  least 1 (vLLM's "auto" spellings such as ``--max-model-len -1`` go through ``--vllm-arg``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hpcserve.rules import DTYPES, KV_CACHE_DTYPES

ARG_UTILS = "vllm/engine/arg_utils.py"
#: ``LoadFormats`` of vLLM 0.26.0 (``vllm/model_executor/model_loader/__init__.py``).
LOAD_FORMATS: tuple[str, ...] = (
    "auto", "hf", "bitsandbytes", "dummy", "fastsafetensors", "instanttensor", "mistral",
    "modelexpress", "npcache", "pt", "runai_streamer", "runai_streamer_sharded",
    "safetensors", "sharded_state", "tensorizer",
)  # fmt: skip
CLI_ARGS = "vllm/entrypoints/openai/cli_args.py"


@dataclass(frozen=True)
class VllmFlag:
    """One `vllm serve` flag."""

    name: str  # python name, as in vLLM's EngineArgs / FrontendArgs
    flag: str  # the CLI spelling vLLM accepts
    type: type  # bool, int, float or str
    help: str
    option: bool = True  # exposed as a render/submit option (else hpcserve sets it itself)
    aliases: tuple[str, ...] = ()  # extra hpcserve option names (e.g. --tp)
    negatable: bool = True  # bools: vLLM also accepts --no-<flag> (BooleanOptionalAction)
    source: str = ARG_UTILS
    low: float | None = None  # numbers: smallest value allowed (or bound, when low_open)
    low_open: bool = False  # the value must be greater than ``low``
    high: float | None = None  # numbers: largest value allowed
    choices: tuple[str, ...] = ()  # text: the values allowed (empty: any one-line text)
    json_object: bool = False  # text: a JSON object (vLLM parses it with json.loads)

    @property
    def negative(self) -> str:
        """The ``--no-`` spelling of a boolean flag."""
        return "--no-" + self.flag[2:]

    @property
    def spelling(self) -> str:
        """How errors name the option: ``--tp/--tensor-parallel-size``."""
        return "/".join((*self.aliases, self.flag))

    def allowed(self) -> str:
        """The allowed values in words (empty when any value of the type is)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.json_object:
            return "a JSON object"
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"greater than {self.low:g}" if self.low_open else f"at least {self.low:g}"
        return ""

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is refused for this flag, or None when it is allowed."""
        if value is None or not self.allowed():
            return None
        if self.choices:
            ok = value in self.choices
        elif self.json_object:
            ok = _is_json_object(value)
        else:
            number = float(value)
            ok = not math.isnan(number)
            if self.low is not None:
                ok = ok and (number > self.low if self.low_open else number >= self.low)
            if self.high is not None:
                ok = ok and number <= self.high
        return None if ok else f"{self.spelling} {value!r}: expected {self.allowed()}"


def _is_json_object(value: Any) -> bool:
    try:
        return isinstance(json.loads(str(value)), dict)
    except ValueError:
        return False


def _f(name: str, typ: type, help: str, **kw: Any) -> VllmFlag:
    return VllmFlag(name=name, flag="--" + name.replace("_", "-"), type=typ, help=help, **kw)


FLAGS: tuple[VllmFlag, ...] = (
    # --- layout: defaulted by hpcserve (TP = GPUs per node, PP = nodes), overridable
    _f(
        "tensor_parallel_size",
        int,
        "Tensor-parallel size (default: the site's engine.layout, GPUs per node or all GPUs).",
        aliases=("--tp",),
        low=1,
    ),
    _f(
        "pipeline_parallel_size",
        int,
        "Pipeline-parallel size (default: the site's engine.layout, nodes or 1).",
        aliases=("--pp",),
        low=1,
    ),
    _f(
        "data_parallel_size",
        int,
        "Data-parallel ranks (vLLM engines, each with TP x PP GPUs and its own KV cache) over "
        "the job's nodes, one API server on the head (default 1).",
        aliases=("--dp",),
        low=1,
    ),
    _f(
        "enable_expert_parallel",
        bool,
        "Expert parallelism for MoE layers: experts spread over DP x TP GPUs (default: on for "
        "a MoE model with --dp above 1).",
    ),
    # --- pass-through options users expect
    _f("max_model_len", int, "Model context length (tokens).", low=1),
    _f(
        "gpu_memory_utilization",
        float,
        "Fraction of each GPU's memory vLLM may use.",
        low=0,
        low_open=True,
        high=1,
    ),
    _f("quantization", str, "Quantisation method (e.g. gptq_marlin, awq, fp8)."),
    _f(
        "dtype",
        str,
        "Weights/activations dtype (half = float16, float = float32).",
        choices=DTYPES,
    ),
    _f("kv_cache_dtype", str, "KV-cache dtype.", choices=KV_CACHE_DTYPES),
    _f("served_model_name", str, "Model name the API reports (default: the model argument)."),
    _f("reasoning_parser", str, "Reasoning parser (e.g. qwen3, deepseek_r1).", source=ARG_UTILS),
    _f(
        "tool_call_parser",
        str,
        "Tool-call parser (needs --enable-auto-tool-choice).",
        source=CLI_ARGS,
    ),
    _f("enable_auto_tool_choice", bool, "Let the model choose tools.", source=CLI_ARGS),
    _f("enable_chunked_prefill", bool, "Chunked prefill."),
    _f("enable_prefix_caching", bool, "Prefix caching."),
    _f("enforce_eager", bool, "Disable CUDA graphs (always eager)."),
    _f("trust_remote_code", bool, "Trust remote code from the model repository."),
    _f("max_num_seqs", int, "Maximum sequences per iteration.", low=1),
    _f("max_num_batched_tokens", int, "Maximum tokens per iteration.", low=1),
    _f("revision", str, "Model revision (branch, tag or commit)."),
    _f("tokenizer", str, "Tokenizer name or path (default: the model)."),
    _f("seed", int, "Random seed."),
    # --- weight loading (vllm/config/load.py LoadConfig; choices as in vLLM 0.26.0)
    _f(
        "load_format",
        str,
        "How weights are read: auto (safetensors, else .bin), safetensors, fastsafetensors "
        "(GPU-direct, needs the fastsafetensors package), instanttensor (needs instanttensor), "
        "runai_streamer (concurrent streaming, needs runai-model-streamer), and vLLM's other "
        "formats (model_executor/model_loader/__init__.py LoadFormats); a plugin's format "
        "through --vllm-arg.",
        choices=LOAD_FORMATS,
    ),
    _f(
        "safetensors_load_strategy",
        str,
        "safetensors reads: lazy (mmap, vLLM's default off NFS/Lustre), eager (each file read "
        "whole into RAM first), prefetch (files read into the page cache by threads before "
        "loading; vLLM 0.26 turns it on by itself on NFS/Lustre when the checkpoint fits in "
        "90% of RAM, not on GPFS or others), torchao.",
        choices=("lazy", "eager", "prefetch", "torchao"),
    ),
    _f(
        "safetensors_prefetch_num_threads",
        int,
        "Threads reading checkpoint files into the page cache with prefetch (vLLM: 8).",
        low=1,
    ),
    _f(
        "model_loader_extra_config",
        str,
        'JSON object for the loader, e.g. \'{"enable_multithread_load": true, '
        '"num_threads": 8}\' (safetensors files read by a thread pool; default_loader.py).',
        json_object=True,
    ),
    # --- topology: set by the launcher per node, never by the user
    _f(
        "distributed_executor_backend",
        str,
        "Worker backend; hpcserve uses 'mp' across nodes (vLLM's multi-node mp executor).",
        option=False,
    ),
    _f("nnodes", int, "Number of nodes (= --nodes).", option=False),
    _f("node_rank", int, "This node's rank: SLURM_NODEID (0 = head).", option=False),
    _f(
        "master_addr",
        str,
        "Head address for torch.distributed: IPv4 of the site's head_interface on node 0.",
        option=False,
    ),
    _f("master_port", int, "torch.distributed port, chosen free on the head.", option=False),
    _f(
        "headless",
        bool,
        "Workers only, no API server: every node but the head.",
        option=False,
        negatable=False,
        source=CLI_ARGS,
    ),
    _f(
        "data_parallel_size_local",
        int,
        "DP ranks on this node: --dp / --nodes.",
        option=False,
    ),
    _f(
        "data_parallel_start_rank",
        int,
        "First DP rank of this node: SLURM_NODEID x the ranks a node (headless nodes).",
        option=False,
    ),
    _f(
        "data_parallel_address",
        str,
        "The head's address, where the engines of every node meet the API server.",
        option=False,
    ),
    _f(
        "data_parallel_rpc_port",
        int,
        "DP RPC port: the launcher's master port, claimed free on the head.",
        option=False,
    ),
    _f("host", str, "API bind address (the head binds 0.0.0.0).", option=False, source=CLI_ARGS),
    _f("port", int, "API port, chosen free on the head.", option=False, source=CLI_ARGS),
)

BY_NAME: dict[str, VllmFlag] = {f.name: f for f in FLAGS}
OPTIONS: tuple[VllmFlag, ...] = tuple(f for f in FLAGS if f.option)
# The options `hpcserve plan` sizes with (the same rows, so plan and render check them alike).
PLAN_OPTIONS: tuple[VllmFlag, ...] = tuple(
    BY_NAME[n]
    for n in (
        "tensor_parallel_size",
        "pipeline_parallel_size",
        "data_parallel_size",
        "enable_expert_parallel",
        "max_model_len",
        "gpu_memory_utilization",
        "kv_cache_dtype",
        "dtype",
        "revision",
    )
)

# Flags a user may not pass with --vllm-arg: hpcserve sets them per node, and --api-key would put
# the key on a command line (vLLM reads VLLM_API_KEY from the environment instead).
RESERVED: frozenset[str] = frozenset(
    [f.flag for f in FLAGS if not f.option]
    + [f.negative for f in FLAGS if not f.option and f.type is bool and f.negatable]
    + ["--api-key", "-n", "-r"]
    # DP's short spellings (``-dpl``, ``-dpr``, ``-dpa``, ``-dpp``) and the load-balancing modes
    # the one-API-server launch cannot combine with (external/hybrid LB, ``--data-parallel-rank``)
    + ["-dpl", "-dpr", "-dpa", "-dpp", "-dpn", "-dph", "-dpe", "--data-parallel-rank"]
    + ["--data-parallel-hybrid-lb", "--no-data-parallel-hybrid-lb"]
    + ["--data-parallel-external-lb", "--no-data-parallel-external-lb"]
)


def flag(name: str) -> str:
    """The vLLM spelling of flag ``name`` (a KeyError names a flag missing from the table)."""
    return BY_NAME[name].flag


def flag_argv(values: Mapping[str, Any]) -> list[str]:
    """``vllm serve`` arguments for ``values`` (python name -> value), in table order.

    ``None`` leaves a flag out; booleans become ``--flag`` or ``--no-flag``.
    """
    unknown = set(values) - set(BY_NAME)
    if unknown:
        raise KeyError(f"unknown vLLM flag(s): {', '.join(sorted(unknown))}")
    argv: list[str] = []
    for f in FLAGS:
        value = values.get(f.name)
        if value is None:
            continue
        if f.type is bool:
            if value:
                argv.append(f.flag)
            elif f.negatable:
                argv.append(f.negative)
        else:
            argv += [f.flag, str(f.type(value))]
    return argv


def check_values(values: Mapping[str, Any]) -> list[str]:
    """Every value of ``values`` (python name -> value, None = unset) outside its flag's bounds
    or choices, one problem each, in table order."""
    unknown = set(values) - set(BY_NAME)
    if unknown:
        raise KeyError(f"unknown vLLM flag(s): {', '.join(sorted(unknown))}")
    problems = (f.problem(values.get(f.name)) for f in FLAGS)
    return [p for p in problems if p]


LONG_MAX_MODEL_LEN = "VLLM_ALLOW_LONG_MAX_MODEL_LEN"


def context_problems(
    max_model_len: int | None, max_position_embeddings: int | None, env: Mapping[str, object]
) -> list[str]:
    """``--max-model-len`` beyond the model's ``max_position_embeddings``, which vLLM refuses
    (``_get_and_verify_max_len`` in ``vllm/config/model.py``) unless ``env`` (the site's
    ``engine.env``) sets ``VLLM_ALLOW_LONG_MAX_MODEL_LEN`` true (``vllm/envs.py``: 1 or true).

    The one rule of ``plan``, ``render`` and ``submit``; unknown lengths pass.
    """
    if not max_model_len or not max_position_embeddings:
        return []
    if max_model_len <= max_position_embeddings:
        return []
    if str(env.get(LONG_MAX_MODEL_LEN, "0")).strip().lower() in ("1", "true"):
        return []
    return [
        f"--max-model-len {max_model_len} exceeds the model's maximum length "
        f"({max_position_embeddings}: max_position_embeddings with its RoPE scaling): vLLM "
        f"refuses it unless {LONG_MAX_MODEL_LEN}=1 is in the site's engine.env (outputs beyond "
        "the trained length may be wrong)"
    ]


# vLLM's short spellings of table flags (``arg_utils.py`` registers ``-tp`` and ``-pp``).
SHORT: dict[str, str] = {
    "-tp": "tensor_parallel_size",
    "-pp": "pipeline_parallel_size",
    "-dp": "data_parallel_size",
}
# The layout's flags, which hpcserve decides on every launch (``--data-parallel-size`` and
# ``--enable-expert-parallel`` only when DP or EP is on); other options only when given.
ALWAYS_SET: tuple[str, ...] = (
    "tensor_parallel_size",
    "pipeline_parallel_size",
    "data_parallel_size",
    "enable_expert_parallel",
)


def table_name(arg: str) -> str | None:
    """The python name of the table flag that argv element ``arg`` spells (``--x``, ``--x=v``,
    ``--no-x``, ``--x_y``: vLLM's ``FlexibleArgumentParser`` reads ``_`` as ``-``), or None."""
    name = arg.split("=", 1)[0]
    if name in SHORT:
        return SHORT[name]
    if not name.startswith("--"):
        return None
    body = name[2:].replace("-", "_")
    if body in BY_NAME:
        return body
    negated = BY_NAME.get(body[3:]) if body.startswith("no_") else None
    return negated.name if negated is not None and negated.type is bool else None


def _extra_arg_problem(arg: str, set_by_hpcserve: frozenset[str]) -> str | None:
    name = arg.split("=", 1)[0]
    known = table_name(arg)
    if name == "--api-key":
        why = "it would put the key on a command line; hpcserve passes VLLM_API_KEY instead"
    elif name in RESERVED or (known is not None and not BY_NAME[known].option):
        why = "hpcserve sets it for each node"
    elif known in set_by_hpcserve:
        why = f"hpcserve already passes {BY_NAME[known].flag}: use {BY_NAME[known].spelling}"
    else:
        return None
    return f"--vllm-arg {arg!r}: {name} is not allowed ({why})"


def check_extra_args(args: Iterable[str], set_by_hpcserve: Iterable[str] = ALWAYS_SET) -> list[str]:
    """Problems with ``--vllm-arg`` values: flags hpcserve sets itself (per node, the layout, and
    the options in ``set_by_hpcserve``, python names) would be repeated on the command line."""
    given = frozenset(set_by_hpcserve)
    problems = (_extra_arg_problem(arg, given) for arg in args)
    return [p for p in problems if p]


def click_options(
    flags: Sequence[VllmFlag] = OPTIONS, help: Mapping[str, str] | None = None
) -> Callable[[Any], Any]:
    """A decorator adding one click option per flag (bools as --x/--no-x, unset = None).

    Values are checked by :func:`check_values`, not by click, so every caller refuses them alike
    with one line; ``help`` replaces the help text of some flags (python name -> text).
    """
    import click

    def decorate(fn: Any) -> Any:
        for f in reversed(flags):
            fn = _click_option(click, f, (help or {}).get(f.name, f.help))(fn)
        return fn

    return decorate


def _click_option(click: Any, f: VllmFlag, text: str) -> Callable[[Any], Any]:
    names = [*f.aliases, f.flag]
    if f.type is bool:
        decl = f"{f.flag}/{f.negative}" if f.negatable else f.flag
        opt: Callable[[Any], Any] = click.option(decl, f.name, default=None, help=text)
        return opt
    if f.allowed() and not f.choices:  # choices show as the metavar
        text = f"{text} Allowed: {f.allowed()}."
    click_type = {int: click.INT, float: click.FLOAT, str: click.STRING}[f.type]
    metavar = "[" + "|".join(f.choices) + "]" if f.choices else None
    valued: Callable[[Any], Any] = click.option(
        *names, f.name, type=click_type, default=None, metavar=metavar, help=text
    )
    return valued


def markdown() -> str:
    """The reference page ``docs/vllm-flags.md``, generated from :data:`FLAGS`."""
    lines = [
        "# vLLM flags known to hpcserve",
        "",
        "Generated from `hpcserve/launch/vllm_flags.py` by `python -m hpcserve.launch.vllm_flags > "
        "docs/vllm-flags.md`; do not edit by hand.",
        "",
        "Options marked *yes* are options of `hpcserve render` and `hpcserve submit` and pass "
        "through to `vllm serve`; the others are set by the launcher for each node. Anything else "
        "goes through `--vllm-arg` (repeatable, one argv element each, e.g. "
        "`--vllm-arg=--max-num-seqs=64`). `--api-key` is refused: the API key reaches vLLM as "
        "`VLLM_API_KEY` in the environment. A `--vllm-arg` that repeats a flag hpcserve passes "
        "(the launcher's, the layout's, or an option given) is refused too. A value outside "
        "its *values* column is refused with "
        "one line (exit 2) by `render`, `submit` and `plan` alike; `plan` takes "
        f"{', '.join(f'`{f.flag}`' for f in PLAN_OPTIONS)} from this table too.",
        "",
        "| vLLM flag | hpcserve option | type | values | meaning | vLLM source |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in FLAGS:
        if f.option:
            opt = ", ".join(f"`{n}`" for n in (*f.aliases, f.flag))
            if f.type is bool and f.negatable:
                opt = f"`{f.flag}` / `{f.negative}`"
        else:
            opt = "(launcher)"
        values = f.allowed() or "any"
        lines.append(
            f"| `{f.flag}` | {opt} | {f.type.__name__} | {values} | {f.help} | `{f.source}` |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
