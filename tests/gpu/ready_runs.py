"""Time to ready on the GPU machine: bare `vllm serve` against the rendered launcher, cold and
warm, weight-loading alternatives, and both benchmarks on one server (tests/gpu/README.md).

Runs there after ``run_vllm_gpu.sh setup`` (vLLM on /opt/hpcserve-gpu) and ``make_llama8b.py``,
from the repo root with this directory carried as ``.gpu/scripts`` (hpcserve in ``pkg/``).
One GPU, one "node". Steps, in the order given (``--steps a,b,...``):

* ``bare``: ``vllm serve MODEL`` with the flags the launcher passes for one node and the
  site's environment, fresh caches; ready = ``/health`` 200, polled every 0.25 s; phases from
  the same hpcserve parser on its log, read every 1 s (the loop ``wait`` uses).
* ``cold``: THE launcher (``hpcserve render --site site.yaml --nodes 1``), its node role as srun
  starts it, the site's compilation cache emptied first; readiness and phases by
  ``wait_ready.py`` (hpcserve's own wait loop).
* ``warm``: the same with the cache the previous ``cold`` left (node-local caches emptied:
  another node of the same site).
* ``warm+bench`` / ``cold+bench``: that start, then on that server ``--bench-rounds`` rounds of
  ``vllm bench serve`` (``vllm_bench_many.py``) and ``hpcserve bench`` at concurrency 1, 16
  and 64, the tool going first alternating, every (round, tool, level) with prompts of its
  own seed.
* ``load=NAME``: ``warm`` with a weight-loading option (:data:`LOADS`) after dropping the page
  cache, so the weights come from disk.

Every start begins with empty node-local caches (``/tmp/torchinductor_root``, ``~/.triton``,
``~/.cache/vllm``). A step that would run past ``--deadline`` seconds is skipped. Results:
``OUT/results-TAG.jsonl`` (one JSON per step) and ``OUT/ready-TAG.tar.gz`` (logs, wait.json,
launcher, bench JSONs), made at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PKG = HERE / "pkg"
ROOT = Path("/opt/hpcserve-gpu")
MODEL = os.environ.get("MODEL", "/tmp/llama-8b")
PORT = 8000
URL = f"http://127.0.0.1:{PORT}"
SITE_CACHE = Path("/tmp/hpcserve-jobs/vllm-cache")  # site.yaml's workdir + vllm-cache
NODE_CACHES = ("/tmp/torchinductor_root", "~/.triton", "~/.cache/vllm", "/tmp/bare-cache")
SITE_ENV = {  # tests/gpu/site.yaml engine.env + what the launcher adds for every node
    "VLLM_USE_FLASHINFER_SAMPLER": "0",
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
    "NCCL_DEBUG": "INFO",
    "PYTHONUNBUFFERED": "1",
    "HF_HUB_OFFLINE": "1",
}
# The argv the launcher passes for one node (hpcserve/launch/render.py node_argv; the test on
# the data compares it with the launcher's own `hpcserve: exec:` line).
BARE_FLAGS = ["--tensor-parallel-size", "1", "--pipeline-parallel-size", "1"]
BARE_FLAGS += ["--host", "0.0.0.0", "--port", str(PORT)]
LOADS: dict[str, list[str]] = {  # hpcserve render options (hpcserve/launch/vllm_flags.py rows)
    "default": [],
    "eager": ["--safetensors-load-strategy", "eager"],
    "prefetch": ["--safetensors-load-strategy", "prefetch"],
    "mt8": ["--model-loader-extra-config", '{"enable_multithread_load": true, "num_threads": 8}'],
    "fastsafetensors": ["--load-format", "fastsafetensors"],
    "runai": ["--load-format", "runai_streamer"],
    "instanttensor": ["--load-format", "instanttensor"],
}
LEVELS = ((1, 16), (16, 64), (64, 128))  # (concurrency, prompts)
GUESS_S = {"bare": 125.0, "cold": 125.0, "warm": 70.0, "bench": 65.0, "load": 90.0}  # run 3

T0 = time.time()


def log(msg: str) -> None:
    print(
        f"[{time.strftime('%H:%M:%S', time.gmtime())} +{time.time() - T0:5.0f}s] {msg}", flush=True
    )


def clear(paths: tuple[str, ...] | list[str]) -> None:
    for p in paths:
        shutil.rmtree(os.path.expanduser(p), ignore_errors=True)


def drop_page_cache() -> bool:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError as e:
        log(f"cannot drop the page cache: {e}")
        return False


def health() -> bool:
    try:
        with urllib.request.urlopen(URL + "/health", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def stop(pid: int) -> float:
    """SIGTERM the process group, SIGKILL after 15 s; wait until the GPU is free. Seconds."""
    t = time.time()
    for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        end = time.time() + wait
        while time.time() < end and alive(pid):
            time.sleep(0.2)
        if not alive(pid):
            break
    for _ in range(60):
        q = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        pids = [x.strip() for x in q.stdout.splitlines() if x.strip()]
        if not pids:
            break
        for p in pids:
            subprocess.run(["kill", "-9", p], check=False)
        time.sleep(0.5)
    return time.time() - t


def follow_phases(logf: Path, t0: float, stop_evt: threading.Event, out: list[dict[str, Any]]):
    """hpcserve's phase parser on a growing log, read every 1 s (as `wait` reads node logs)."""
    sys.path.insert(0, str(PKG))
    from hpcserve.jobs.phases import PhaseInfo, read_phase

    info, pos, last = PhaseInfo(), 0, ""
    while not stop_evt.is_set():
        try:
            with open(logf, "rb") as fh:
                fh.seek(pos)
                data = fh.read()
                pos += len(data)
        except OSError:
            data = b""
        if data:
            read_phase(data.decode(errors="replace").splitlines(), info)
            if info.phase != last:
                last = info.phase
                out.append({"t_s": round(time.time() - t0, 2), "phase": info.phase})
        stop_evt.wait(1.0)


def wait_bare(pid: int, t0: float, timeout: float) -> float | None:
    while time.time() - t0 < timeout:
        if health():
            return time.time() - t0
        if not alive(pid):
            return None
        time.sleep(0.25)
    return None


def render(job: Path, extra: list[str]) -> Path:
    job.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "hpcserve", "render", "--site", str(HERE / "site.yaml")]
    argv += ["--nodes", "1", "--model", MODEL, "--job-dir", str(job), "--name", "ready"]
    argv += ["--no-api-key", *extra]
    text = subprocess.run(argv, cwd=PKG, capture_output=True, text=True, check=True).stdout
    (job / "launcher.sbatch").write_text(text)
    return job / "launcher.sbatch"


class Runner:
    def __init__(self, tag: str, out: Path, deadline: float, bench_rounds: int = 1) -> None:
        self.tag, self.out, self.deadline = tag, out, deadline
        self.bench_rounds = bench_rounds
        self.work = Path(f"/tmp/ready-{tag}")
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.results: list[dict[str, Any]] = []
        self.took: dict[str, float] = {}
        self.n = 0

    def fits(self, step: str) -> bool:
        """Whether ``step`` ends before the deadline, judged by the last step of its kind."""
        kinds = [step.split("=")[0]]
        if step.endswith("+bench"):
            kinds = [step.removesuffix("+bench"), "bench"]
        guess = sum(self.took.get(k, GUESS_S[k]) for k in kinds)
        left = self.deadline - (time.time() - T0)
        return guess <= left

    def record(self, res: dict[str, Any]) -> None:
        self.results.append(res)
        with open(self.out / f"results-{self.tag}.jsonl", "a") as fh:
            fh.write(json.dumps(res) + "\n")
        keep = {k: res.get(k) for k in ("step", "ready_s", "compile_cache", "compile_s")}
        log(f"result: {keep} phases {res.get('phases')}")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(SITE_ENV)
        env["PATH"] = f"{ROOT / 'bin'}:{env['PATH']}"
        env["CUDA_VISIBLE_DEVICES"] = "0"
        return env

    def bare(self) -> None:
        self.n += 1
        name = f"{self.n:02d}-bare"
        d = self.work / name
        d.mkdir()
        clear(list(NODE_CACHES))
        env = self.env()
        env["VLLM_CACHE_ROOT"] = "/tmp/bare-cache/vllm"
        env["TRITON_CACHE_DIR"] = "/tmp/bare-cache/triton"
        argv = ["vllm", "serve", MODEL, *BARE_FLAGS]
        logf = d / "serve.log"
        t0 = time.time()
        with open(logf, "wb") as fh:
            p = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        phases: list[dict[str, Any]] = []
        evt = threading.Event()
        th = threading.Thread(target=follow_phases, args=(logf, t0, evt, phases), daemon=True)
        th.start()
        ready = wait_bare(p.pid, t0, 300)
        evt.set()
        th.join(3)
        stop_s = stop(p.pid)
        res = {"step": "bare", "name": name, "started": t0, "argv": argv, "ready_s": ready,
               "phases": phases, "stop_s": round(stop_s, 1)}  # fmt: skip
        res.update(facts(logf))
        self.took["bare"] = time.time() - t0
        self.record(res)

    def launcher(self, kind: str, load: str | None = None, bench: bool = False) -> None:
        self.n += 1
        name = f"{self.n:02d}-{kind}" + (f"-{load}" if load else "")
        job = self.work / name
        clear(list(NODE_CACHES))
        if kind == "cold":
            clear([str(SITE_CACHE)])
        dropped = drop_page_cache() if load is not None else None
        script = render(job, LOADS.get(load or "default", []))
        env = self.env()
        env.update(
            SLURM_NODEID="0", SLURM_PROCID="0", SLURM_NNODES="1", SLURM_JOB_NUM_NODES="1",
            SLURM_JOB_ID="4242", HPCSERVE_HEAD_ADDR="127.0.0.1", HPCSERVE_API_PORT=str(PORT),
            HPCSERVE_MASTER_PORT="29500",
        )  # fmt: skip
        t0 = time.time()
        with open(job / "node-0.launcher", "wb") as out:
            p = subprocess.Popen(["bash", str(script), "node"], env=env, start_new_session=True,
                                 stdout=out, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL)  # fmt: skip
        w = subprocess.run(
            [sys.executable, str(HERE / "wait_ready.py"), "--job-dir", str(job), "--url", URL,
             "--since", str(t0), "--pids", str(p.pid), "--model", MODEL, "--tp", "1",
             "--timeout", "300", "--out", str(job / "wait.json")],
            env={**env, "PYTHONPATH": str(PKG)}, check=False,
        )  # fmt: skip
        ready_at = time.time() - t0
        wait = json.loads((job / "wait.json").read_text()) if (job / "wait.json").exists() else {}
        res: dict[str, Any] = {
            "step": kind if load is None else f"load={load}",
            "name": name,
            "started": t0,
            "ready_s": wait.get("ready_s"),
            "wait_rc": w.returncode,
            "wait_returned_s": round(ready_at, 2),
            "phases": [{"t_s": t["t_s"], "phase": t["phase"]} for t in wait.get("timeline", [])],
            "page_cache_dropped": dropped,
            "load_options": LOADS.get(load or "default", []),
        }
        if bench and w.returncode == 0:
            res["bench"] = self.bench(job)
        res["stop_s"] = round(stop(p.pid), 1)
        res.update(facts(job / "node-0.log"))
        bench_s = res["bench"]["took_s"] if "bench" in res else 0.0
        self.took["load" if load else kind] = time.time() - t0 - bench_s
        self.record(res)

    def bench(self, job: Path) -> dict[str, Any]:
        """One discarded warm-up (c=64, 64 prompts), then ``--bench-rounds`` rounds of both
        tools at every level, the first tool alternating (vLLM first in odd rounds). Each
        (round, tool, level) sends prompts of its own seed: none is a repeat that vLLM's prefix
        cache could answer."""
        d = job / "bench"
        d.mkdir()
        t = time.time()
        env = self.env()
        common = ["--input-len", "128", "--output-len", "128", "--json"]
        hp = [sys.executable, "-m", "hpcserve", "bench", "--url", URL]
        r = subprocess.run([*hp, "--concurrency", "64", "--num-prompts", "64", "--seed", "9",
                            *common], cwd=PKG, env=env, capture_output=True, text=True,
                           timeout=200, check=False)  # fmt: skip
        (d / "warmup.json").write_text(r.stdout)
        (d / "warmup.err").write_text(r.stderr)
        log(f"bench warm-up rc={r.returncode} in {time.time() - t:.0f} s")
        venv = {**env, "PYTHONPATH": f"{ROOT / 'site'}:{ROOT / 'deps'}"}
        vargs = ["--backend", "openai-chat", "--endpoint", "/v1/chat/completions",
                 "--base-url", URL, "--model", MODEL, "--tokenizer", MODEL,
                 "--dataset-name", "random", "--random-input-len", "128",
                 "--random-output-len", "128", "--ignore-eos",
                 "--percentile-metrics", "ttft,tpot,itl,e2el"]  # fmt: skip

        def vllm_round(rnd: int) -> None:
            levels = ",".join(f"{c}:{n}:{seed(rnd, 'vllm', i)}" for i, (c, n) in enumerate(LEVELS))
            with open(d / f"vllm-r{rnd}-bench.txt", "w") as fh:
                r = subprocess.run(
                    [sys.executable, str(HERE / "vllm_bench_many.py"), "--levels", levels,
                     "--result-dir", str(d), "--prefix", f"vllm-r{rnd}-", "--", *vargs],
                    env=venv, stdout=fh, stderr=subprocess.STDOUT, timeout=300, check=False,
                )  # fmt: skip
            log(f"round {rnd} vllm bench rc={r.returncode} at {time.time() - t:.0f} s")

        def hpcserve_round(rnd: int) -> None:
            for i, (c, n) in enumerate(LEVELS):
                r = subprocess.run([*hp, "--concurrency", str(c), "--num-prompts", str(n),
                                    "--seed", str(seed(rnd, "hpcserve", i)), *common],
                                   cwd=PKG, env=env, capture_output=True, text=True,
                                   timeout=200, check=False)  # fmt: skip
                (d / f"hpcserve-r{rnd}-c{c}.json").write_text(r.stdout)
                (d / f"hpcserve-r{rnd}-c{c}.err").write_text(r.stderr)
                log(
                    f"round {rnd} hpcserve bench c={c} rc={r.returncode} at {time.time() - t:.0f} s"
                )

        rounds = []
        for rnd in range(1, self.bench_rounds + 1):
            order = (vllm_round, hpcserve_round) if rnd % 2 else (hpcserve_round, vllm_round)
            for f in order:
                f(rnd)
            summary = summarize_bench(d, rnd)
            for row in summary:
                log(f"bench round {rnd}: {row}")
            rounds.append({"round": rnd, "first": "vllm" if rnd % 2 else "hpcserve",
                           "levels": summary})  # fmt: skip
        self.took["bench"] = time.time() - t
        return {"rounds": rounds, "took_s": round(time.time() - t, 1)}

    def run(self, steps: list[str]) -> None:
        for step in steps:
            if not self.fits(step):
                log(f"skip {step}: would pass the deadline ({self.deadline:.0f} s)")
                self.record({"step": step, "skipped": "deadline"})
                continue
            log(f"step {step}")
            try:
                if step == "bare":
                    self.bare()
                elif step in ("cold", "warm"):
                    self.launcher(step)
                elif step in ("cold+bench", "warm+bench"):
                    self.launcher(step.removesuffix("+bench"), bench=True)
                elif step.startswith("load="):
                    self.launcher("warm", load=step.split("=", 1)[1])
            except Exception as e:  # keep going: the other steps still count
                log(f"step {step} failed: {type(e).__name__}: {e}")
                self.record({"step": step, "error": f"{type(e).__name__}: {e}"})

    def pack(self) -> None:
        with tarfile.open(self.out / f"ready-{self.tag}.tar.gz", "w:gz") as tar:
            tar.add(self.work, arcname=f"ready-{self.tag}")
        log(f"packed {self.out / f'ready-{self.tag}.tar.gz'}")


def seed(rnd: int, tool: str, level: int) -> int:
    """The prompts' seed of one (round, tool, level): all different."""
    return 100 * rnd + (50 if tool == "hpcserve" else 0) + level


def summarize_bench(d: Path, rnd: int) -> list[dict[str, Any]]:
    keys = ("completed", "output_throughput", "median_ttft_ms", "median_tpot_ms", "mean_tpot_ms",
            "mean_itl_ms")  # fmt: skip
    rows = []
    for c, _ in LEVELS:
        row: dict[str, Any] = {"c": c}
        for tool in ("vllm", "hpcserve"):
            f = d / f"{tool}-r{rnd}-c{c}.json"
            try:
                data = json.loads(f.read_text())
                data = data[0] if isinstance(data, list) else data
                row[tool] = {k: data.get(k) for k in keys}
            except (OSError, ValueError, IndexError) as e:
                row[tool] = f"missing: {e}"
        rows.append(row)
    return rows


def facts(logf: Path) -> dict[str, Any]:
    """What hpcserve's parsers and a few of vLLM's lines say about one start's log."""
    import re

    sys.path.insert(0, str(PKG))
    from hpcserve.jobs.phases import read_phase, split_lines

    try:
        text = logf.read_text(errors="replace")
    except OSError:
        return {}
    info = read_phase(split_lines(text))
    out: dict[str, Any] = {
        "compile_cache": info.compile_cache,
        "compile_s": info.compile_seconds,
        "kv_tokens": info.kv_cache_tokens,
        "kv_gib": info.kv_cache_memory_gib,
        "final_phase": info.phase,
    }
    for key, pat in (
        ("weights_s", r"Loading weights took ([0-9.]+) seconds"),
        ("model_load_s", r"Model loading took [0-9.]+ GiB(?: memory)? and ([0-9.]+) seconds"),
        ("engine_init_s", r"init engine \(profile, create kv cache, warmup model\) took ([0-9.]+)"),
        ("graphs_s", r"Graph capturing finished in ([0-9.]+) secs"),
    ):
        m = re.search(pat, text)
        out[key] = float(m.group(1)) if m else None
    m = re.search(r"hpcserve: exec: (.*)", text)
    out["exec"] = m.group(1) if m else None
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--deadline", type=float, default=560, help="seconds from now")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    ap.add_argument("--bench-rounds", type=int, default=1)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    r = Runner(args.tag, out, args.deadline, args.bench_rounds)
    try:
        r.run([s for s in args.steps.split(",") if s])
    finally:
        r.pack()


if __name__ == "__main__":
    main()
