"""Batch scripts for the cluster tests on the local lab (`hpcserve lab up`).

`vllm_launcher` writes a launcher with the job-directory layout of the brief's contract
(endpoint.json, node-K.log, slurm-%j.out), small enough to read in a test: the batch step finds
the head address on eth0, writes endpoint.json and starts one vLLM per node with srun. It is
NOT the product's launcher (templates/, the launch helper's); it exists so these tests can
produce real scheduler states and real vLLM failures before `hpcserve submit` is merged.
"""

from __future__ import annotations

import shlex


def sleep_script(seconds: int, exit_code: int = 0) -> str:
    return f"#!/bin/bash\necho started on $SLURMD_NODENAME\nsleep {seconds}\nexit {exit_code}\n"


def vllm_launcher(
    jobdir: str,
    *,
    venv: str,
    model: str,
    nodes: int,
    tp: int = 1,
    pp: int | None = None,
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
    kill_node_after: tuple[int, int] | None = None,
) -> str:
    """A launcher for ``nodes`` lab nodes; ``kill_node_after=(K, S)`` makes node K's vLLM
    kill itself with SIGKILL S seconds after it started (a worker dying for real)."""
    pp = pp if pp is not None else nodes
    q = shlex.quote
    envs = {
        "VLLM_TARGET_DEVICE": "cpu",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "HF_HUB_OFFLINE": "1",
        "GLOO_SOCKET_IFNAME": "eth0",
        "PYTHONUNBUFFERED": "1",  # else vLLM's log lines reach node-K.log in late blocks
        **(env or {}),
    }
    exports = "\n".join(f"export {k}={q(v)}" for k, v in envs.items())
    args = [
        "--tensor-parallel-size",
        str(tp),
        "--pipeline-parallel-size",
        str(pp),
        "--enforce-eager",
        "--max-model-len",
        "512",
        "--max-num-seqs",
        "4",
        *(extra or []),
    ]
    kill_k, kill_s = kill_node_after if kill_node_after else (-1, 0)
    return f"""#!/bin/bash
D={q(jobdir)}
if [ "$1" != node ]; then
  HEAD=$(ip -4 -o addr show eth0 | awk '{{print $4}}' | cut -d/ -f1)
  API=$((8100 + SLURM_JOB_ID % 500)); MASTER=$((29600 + SLURM_JOB_ID % 300))
  printf '{{"job_id":"%s","head_addr":"%s","head_host":"%s","api_port":%s,"master_port":%s}}\\n' \\
    "$SLURM_JOB_ID" "$HEAD" "$SLURMD_NODENAME" "$API" "$MASTER" > "$D/endpoint.json"
  export HPCSERVE_HEAD_ADDR=$HEAD HPCSERVE_API_PORT=$API HPCSERVE_MASTER_PORT=$MASTER
  exec srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --kill-on-bad-exit=1 \\
    bash "$D/launcher.sbatch" node
fi
{exports}
export VLLM_CPU_OMP_THREADS_BIND=$SLURM_NODEID
K=$SLURM_NODEID
common="{" ".join(args)} --nnodes {nodes} --node-rank $K"
common="$common --master-addr $HPCSERVE_HEAD_ADDR --master-port $HPCSERVE_MASTER_PORT"
if [ "$K" = 0 ]; then
  role="--host 0.0.0.0 --port $HPCSERVE_API_PORT"
else
  role="--headless"
fi
{q(venv)}/bin/vllm serve {q(model)} $common $role >> "$D/node-$K.log" 2>&1 &
pid=$!
if [ "$K" = {kill_k} ]; then
  sleep {kill_s}; kill -9 $pid
fi
wait $pid
"""
