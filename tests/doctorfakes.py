"""A fake cluster for the doctor tests: a FakeExecutor answering every command doctor runs,
with the probe's node answers appearing in the job directory when the job is submitted."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from typing import Any

from fakes import FakeExecutor, result

from hpcserve.cluster.executor import CommandResult
from hpcserve.doctor.login import VERSIONS_CODE


def gloo_answers(nodes: int = 2, **over: Any) -> list[dict[str, Any]]:
    """What ``node_probe.py`` writes for a CPU site whose nodes all work (gloo)."""
    out = []
    for k in range(nodes):
        addr = f"10.77.0.{11 + k}"
        a: dict[str, Any] = {
            "rank": k,
            "hostname": f"node{k + 1}",
            "cpus": 2,
            "gpus": {"cuda_visible_devices": None, "torch": "2.5.1+cpu", "count": 0, "names": []},
            "infiniband": [],
            "interface": {"name": "eth0", "addr": addr},
            "interfaces": [["lo", "127.0.0.1"], ["eth0", addr]],
            "vllm_host_ip": addr,
            "tmp": {"path": "/tmp", "writable": True, "error": None},
            "collective": {"backend": "gloo", "ok": True, "error": None, "correct": True},
        }
        if k == 0:
            a["shared"] = {"seen": list(range(nodes)), "missing": []}
            a["tcp"] = {
                "accepted": {"api": list(range(1, nodes)), "master": list(range(1, nodes))},
                "errors": {},
                "ports": {"api": 8042, "master": 9042},
            }
            a["collective"]["timings"] = [
                {"bytes": 1 << 20, "seconds": 0.002, "iters": 5},
                {"bytes": 1 << 23, "seconds": 0.016, "iters": 5},
            ]
        else:
            a["shared"] = {"head_file_seen": True}
            a["tcp"] = {
                "connect": {"api": "ok", "master": "ok"},
                "head": "10.77.0.11",
                "ports": {"api": 8042, "master": 9042},
            }
        out.append(a)
    for k, changes in over.items():
        out[int(k.removeprefix("node"))].update(changes)
    return out


class FakeCluster:
    """Answers for every command of a doctor run; set attributes to break one of them."""

    def __init__(self, answers: list[dict[str, Any]] | None = None) -> None:
        self.answers = gloo_answers() if answers is None else answers
        self.missing_commands = ""
        self.test_only = result(
            ["sbatch"], stderr="sbatch: Job 41 to start at 2026-12-01T12:00:00 using 2 "
            "processors on nodes node[1-2] in partition lab"
        )  # fmt: skip
        self.modules = result(["bash"])
        self.runtime = result(["bash"], '{"vllm": "0.32.0", "torch": "2.5.1+cpu"}\n')
        self.hf = result(["bash"])
        self.states = ["PENDING", "RUNNING", "COMPLETED"]
        self.on_squeue: Callable[[int], None] | None = None
        self.squeue_calls = 0
        self.inputs: list[str | None] = []
        self.ex = InputRecordingExecutor(self._answer, self.inputs)

    def _bash(self, script: str) -> CommandResult:
        if 'command -v "$c"' in script:
            return result(["bash"], self.missing_commands)
        if VERSIONS_CODE in script:
            return self.runtime
        if "module load" in script:
            return self.modules
        return self.hf

    def _answer(self, argv: list[str]) -> CommandResult | None:
        if argv == ["hostname"]:
            return result(argv, "login1\n")
        if argv == ["printenv", "HOME"]:
            return result(argv, "/home/u\n")
        if argv[:2] == ["bash", "-c"]:
            return self._bash(argv[2])
        if argv[:2] == ["sbatch", "--test-only"]:
            return self.test_only
        if argv[:2] == ["sbatch", "--parsable"]:
            self._job_ran(posixpath.dirname(argv[-1]))
            return result(argv, "77\n")
        if argv[0] == "squeue" and "-s" not in argv:
            return self._squeue(argv)
        if argv[0] in ("scancel", "find"):
            return result(argv)
        return None

    def _squeue(self, argv: list[str]) -> CommandResult:
        self.squeue_calls += 1
        if self.on_squeue is not None:
            self.on_squeue(self.squeue_calls)
        state = self.states[min(self.squeue_calls - 1, len(self.states) - 1)]
        return result(argv, f"77|{state}|None|2|node[1-2]|4:00|5:00|N/A|0:31\n")

    def _job_ran(self, job_dir: str) -> None:
        self.job_dir = job_dir
        for a in self.answers:
            path = posixpath.join(job_dir, "doctor", f"node-{a['rank']}.json")
            self.ex.files[path] = json.dumps(a)


class InputRecordingExecutor(FakeExecutor):
    """A FakeExecutor that also keeps what each command got on stdin."""

    def __init__(
        self, responder: Callable[[list[str]], CommandResult | None], inputs: list[str | None]
    ) -> None:
        super().__init__(responder)
        self.inputs = inputs

    def run(
        self, argv: list[str], *, input: str | None = None, timeout: float | None = 60
    ) -> CommandResult:  # noqa: A002
        self.inputs.append(input)
        return super().run(argv, input=input, timeout=timeout)
