"""`hpcserve plan` for a hub model id against a local stand-in for the Hugging Face Hub.

The real ``huggingface_hub`` talks HTTP to tests/hub_server.py (HF_ENDPOINT), with HF_HOME in a
temporary directory; ``hpcserve`` runs as a subprocess so the library reads that environment as
it would on a laptop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import COMMIT, HubServer, HubState, Repo

from hpcserve.plan.modelinfo import local_model_info

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "models"
MODEL = "Qwen/Qwen2.5-7B-Instruct"
GATED = "meta-llama/Llama-3.1-70B"
TOKEN = "hf_testtoken_do_not_print_0123456789"
EXACT = 15_231_233_024  # metadata.total_size of Qwen2.5-7B-Instruct's safetensors index
INDEX = json.dumps({"metadata": {"total_size": EXACT}, "weight_map": {}}).encode()


@pytest.fixture
def hub() -> Iterator[tuple[HubState, str]]:
    state = HubState(
        repos={
            MODEL: Repo(
                files={
                    "config.json": (DATA / "qwen2.5-7b-instruct.json").read_bytes(),
                    "model.safetensors.index.json": INDEX,
                }
            ),
            GATED: Repo(
                files={"config.json": (DATA / "llama-3.1-70b.json").read_bytes()}, token=TOKEN
            ),
        }
    )
    with HubServer(state) as url:
        yield state, url


def _env(tmp_path: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HPCSERVE_", "XDG_"))}
    env.update(
        HOME=str(tmp_path / "home"),
        HF_HOME=str(tmp_path / "hf"),
        HF_ENDPOINT=endpoint,
        PYTHONPATH=str(REPO_ROOT),
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    env.update(extra)
    return env


def run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``argv`` from the checkout with ``env``, its output captured as text."""
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env, check=False
    )


def plan(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run([sys.executable, "-m", "hpcserve", "plan", "--site", "meluxina", *args], env)


def _resolves(state: HubState) -> list[str]:
    return [s.path for s in state.seen if "/resolve/" in s.path]


def test_plan_fetches_config_and_index_from_the_hub(
    hub: tuple[HubState, str], tmp_path: Path
) -> None:
    state, url = hub
    r = plan(_env(tmp_path, url), "--model", MODEL, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    snapshot = tmp_path / "hf" / "hub" / "models--Qwen--Qwen2.5-7B-Instruct" / "snapshots" / COMMIT
    assert out["config_path"] == str(snapshot / "config.json")
    assert out["weights"]["safetensors_bytes"] == EXACT
    assert (snapshot / "model.safetensors.index.json").is_file()
    fetched = _resolves(state)
    assert any(p.endswith("/resolve/main/config.json") for p in fetched)
    assert any(p.endswith("/resolve/main/model.safetensors.index.json") for p in fetched)


def test_plan_text_names_the_fetched_config(hub: tuple[HubState, str], tmp_path: Path) -> None:
    _, url = hub
    r = plan(_env(tmp_path, url), "--model", MODEL)
    assert r.returncode == 0, r.stderr
    assert "models--Qwen--Qwen2.5-7B-Instruct" in r.stdout
    assert "safetensors index says" in r.stdout
    assert r.stderr == ""


def test_cached_model_is_reused_offline(hub: tuple[HubState, str], tmp_path: Path) -> None:
    state, url = hub
    assert plan(_env(tmp_path, url), "--model", MODEL).returncode == 0
    state.seen.clear()
    r = plan(_env(tmp_path, url, HF_HUB_OFFLINE="1"), "--model", MODEL, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["weights"]["safetensors_bytes"] == EXACT
    assert state.seen == []


def test_cached_model_is_used_without_asking_the_hub(
    hub: tuple[HubState, str], tmp_path: Path
) -> None:
    state, url = hub
    assert plan(_env(tmp_path, url), "--model", MODEL).returncode == 0
    state.seen.clear()
    assert plan(_env(tmp_path, url), "--model", MODEL).returncode == 0
    assert state.seen == []


def test_offline_miss_names_the_file_and_how_to_get_it(
    hub: tuple[HubState, str], tmp_path: Path
) -> None:
    state, url = hub
    r = plan(_env(tmp_path, url, HF_HUB_OFFLINE="1"), "--model", MODEL)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "config.json" in lines[0] and "HF_HUB_OFFLINE" in lines[0]
    assert f"hf download {MODEL} config.json" in lines[0] and "--config-json" in lines[0]
    assert state.seen == []


@pytest.mark.slow  # huggingface_hub retries a refused connection for about 20 s
def test_unreachable_hub_is_the_same_miss(tmp_path: Path) -> None:
    with HubServer(HubState()) as url:
        pass  # the port is closed again: nothing listens there
    r = plan(_env(tmp_path, url), "--model", MODEL)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "could not reach" in lines[0] and url in lines[0]
    assert f"hf download {MODEL} config.json" in lines[0]


def test_gated_model_without_a_token_says_set_hf_token(
    hub: tuple[HubState, str], tmp_path: Path
) -> None:
    state, url = hub
    r = plan(_env(tmp_path, url), "--model", GATED)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "gated" in lines[0] and "HF_TOKEN" in lines[0]
    assert not any(s.authorized for s in state.seen)


def test_gated_model_with_the_token_is_fetched(hub: tuple[HubState, str], tmp_path: Path) -> None:
    state, url = hub
    r = plan(_env(tmp_path, url, HF_TOKEN=TOKEN), "--model", GATED, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"] == GATED
    assert TOKEN not in r.stdout + r.stderr
    assert all(s.authorized for s in state.seen)


def test_wrong_token_is_refused_and_never_printed(
    hub: tuple[HubState, str], tmp_path: Path
) -> None:
    _, url = hub
    wrong = "hf_wrong_token_abcdef"
    r = plan(_env(tmp_path, url, HF_TOKEN=wrong), "--model", GATED)
    assert r.returncode == 2
    assert "HF_TOKEN" in r.stderr and "gated" in r.stderr
    assert wrong not in r.stdout + r.stderr


def test_unknown_repo_says_it_does_not_exist(hub: tuple[HubState, str], tmp_path: Path) -> None:
    _, url = hub
    r = plan(_env(tmp_path, url), "--model", "org/no-such-model")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "org/no-such-model" in lines[0] and "does not exist" in lines[0]


def api(env: dict[str, str], code: str) -> dict[str, object]:
    """Run ``code`` (it binds ``out``; ``MODEL`` is bound) in a fresh interpreter with ``env``;
    ``out`` read back as JSON."""
    head = f"import json\nfrom hpcserve.plan.modelinfo import load_model_info\nMODEL = {MODEL!r}"
    script = f"{head}\n{code}\nprint(json.dumps(out))"
    r = run([sys.executable, "-c", script], env)
    assert r.returncode == 0, r.stderr
    result: dict[str, object] = json.loads(r.stdout)
    return result


def test_unknown_revision_says_it_does_not_exist(hub: tuple[HubState, str], tmp_path: Path) -> None:
    _, url = hub
    code = (
        "try:\n    load_model_info(MODEL, revision='v9')\n    out = {}\n"
        "except Exception as e:\n    out = {'type': type(e).__name__, 'msg': str(e)}"
    )
    out = api(_env(tmp_path, url), code)
    assert out["type"] == "UsageError"
    assert "revision 'v9'" in str(out["msg"]) and "does not exist" in str(out["msg"])


def test_python_api_takes_the_same_path(hub: tuple[HubState, str], tmp_path: Path) -> None:
    _, url = hub
    code = (
        "i = load_model_info(MODEL)\n"
        "out = {'bytes': i.safetensors_total_size, 'hidden': i.hidden_size}"
    )
    assert api(_env(tmp_path, url), code) == {"bytes": EXACT, "hidden": 3584}


def test_repo_without_an_index_estimates_the_weights(
    hub: tuple[HubState, str], tmp_path: Path
) -> None:
    state, url = hub
    del state.repos[MODEL].files["model.safetensors.index.json"]
    code = "i = load_model_info(MODEL)\nout = {'bytes': i.safetensors_total_size}"
    assert api(_env(tmp_path, url), code) == {"bytes": None}
    assert any(p.endswith("/model.safetensors.index.json") for p in _resolves(state))


def test_local_model_info_never_asks_the_hub(hub: tuple[HubState, str], tmp_path: Path) -> None:
    state, url = hub
    env = _env(tmp_path, url)
    assert local_model_info(MODEL, env=env) is None
    assert state.seen == []
    assert plan(env, "--model", MODEL).returncode == 0  # now it is in the cache
    state.seen.clear()
    info = local_model_info(MODEL, env=env)
    assert info is not None and info.safetensors_total_size == EXACT
    assert state.seen == []


def test_render_never_asks_the_hub(hub: tuple[HubState, str], tmp_path: Path) -> None:
    state, url = hub
    argv = [sys.executable, "-m", "hpcserve", "render", "--site", "meluxina", "--model", MODEL]
    r = run([*argv, "--image", "/project/vllm.sif"], _env(tmp_path, url))
    assert "#SBATCH" in r.stdout, r.stderr
    assert state.seen == []


def test_render_and_plan_modules_do_not_import_huggingface_hub() -> None:
    code = (
        "import sys, hpcserve.cli, hpcserve.plan.modelinfo, hpcserve.launch.request;"
        "assert 'huggingface_hub' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)
