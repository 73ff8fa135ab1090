"""``hpcserve tunnel/query/chat/bench`` in-process: options, printed lines and exit codes."""

from __future__ import annotations

import builtins
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cliutil import REPO, run_main
from net_fixtures import (  # noqa: F401
    SshLab,
    StandInHTTP,
    free_port,
    hold_then_stop,
    lab1,
    ssh_lab,
    stand_in_http,
)


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh registry root; SIGTERM ignored outside the tunnel's own handler (a backstop)."""
    monkeypatch.setenv("HPCSERVE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("HPCSERVE_API_KEY", raising=False)
    old = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        yield tmp_path / "state"
    finally:
        signal.signal(signal.SIGTERM, old)


def feed(monkeypatch: pytest.MonkeyPatch, *lines: str) -> None:
    """``input()`` answers ``lines``, then Ctrl-D."""
    it = iter(lines)

    def fake_input(prompt: str = "") -> str:
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(builtins, "input", fake_input)


# -- tunnel ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "error: name a JOB, or give --remote HOST:PORT with --login"),
        (("--stop",), "error: no background tunnel runs"),
        (("--remote", "nope"), "error: --remote must be HOST:PORT, not 'nope'"),
        (
            ("--remote", "127.0.0.1:9"),
            "error: --remote without a JOB needs --login [user@]host[:port]",
        ),
    ],
)
def test_tunnel_usage_errors(capsys: Any, args: tuple[str, ...], message: str) -> None:
    code, out, err = run_main(capsys, "tunnel", *args)
    assert code == 2 and out == ""
    assert err.strip() == message


def test_tunnel_foreground_until_sigterm(
    lab1: SshLab,  # noqa: F811
    stand_in_http: StandInHTTP,  # noqa: F811
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hpcserve.net.tunnel import Forwarder

    port = free_port()
    got = hold_then_stop(monkeypatch, (Forwarder,))
    code, out, err = run_main(
        capsys, "tunnel", "--remote", f"127.0.0.1:{stand_in_http.port}", "--login", "login",
        "--local-port", str(port),
    )  # fmt: skip
    assert code == 0, err
    assert got and got[0].startswith(b'{"data"')
    assert out.splitlines() == [
        f"OpenAI base URL: http://127.0.0.1:{port}/v1",
        "API key: none (any value works)",
    ]
    assert err.splitlines() == [
        f"tunnel up: 127.0.0.1:{port} -> 127.0.0.1:{stand_in_http.port} via login",
        "server healthy; models: stand-in",
        "Ctrl-C closes the tunnel.",
        "tunnel closed",
    ]


def test_tunnel_background_then_stop(
    lab1: SshLab,  # noqa: F811
    stand_in_http: StandInHTTP,  # noqa: F811
    capfd: Any,
    monkeypatch: pytest.MonkeyPatch,
    state_dir: Path,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    args = ["tunnel", "--remote", f"127.0.0.1:{stand_in_http.port}", "--login", "login"]
    monkeypatch.setattr(sys, "argv", ["hpcserve", *args, "--background"])
    code, out, err = run_main(capfd, *args, "--background")
    assert code == 0, err
    key = f"remote-127.0.0.1-{stand_in_http.port}"
    state = json.loads((state_dir / "tunnels" / f"{key}.json").read_text())
    threading.Thread(target=os.waitpid, args=(state["pid"], 0), daemon=True).start()
    # the child speaks on this terminal until its tunnel is up, then the parent says where it is
    assert f"OpenAI base URL: {state['url']}/v1" in out
    assert out.splitlines()[-1] == (
        f"tunnel runs in the background (pid {state['pid']}): {state['url']}; "
        f"stop it with `hpcserve tunnel --stop {key}`"
    )
    assert "tunnel up: " in err
    code, out, err = run_main(capfd, "tunnel", "--stop", key)
    assert code == 0, err
    assert out.strip() == f"stopped the tunnel of {key} ({state['url']}, pid {state['pid']})"
    assert not (state_dir / "tunnels" / f"{key}.json").exists()


# -- query -------------------------------------------------------------------------------------


def test_query_json_with_options(stand_in_http: StandInHTTP, capsys: Any) -> None:  # noqa: F811
    code, out, err = run_main(
        capsys, "query", "--url", stand_in_http.url, "--system", "be brief", "--temperature",
        "0.5", "--max-tokens", "9", "--json", "hello",
    )  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["choices"][0]["message"]["content"] == "Hello from the stand-in"


@pytest.mark.parametrize(
    "args", [("job", "one", "two"), ("--url", "http://127.0.0.1:9", "job", "prompt")]
)
def test_query_takes_one_prompt(capsys: Any, args: tuple[str, ...]) -> None:
    code, _, err = run_main(capsys, "query", *args)
    assert code == 2
    assert err.strip() == ("error: give JOB and one PROMPT (quote the prompt), or --url and PROMPT")


def test_query_bad_url_is_a_usage_error(capsys: Any) -> None:
    code, _, err = run_main(capsys, "query", "--url", "127.0.0.1:8000", "hi")
    assert code == 2 and "--url must look like http://HOST:PORT" in err


# -- chat --------------------------------------------------------------------------------------


def test_chat_session(
    stand_in_http: StandInHTTP,  # noqa: F811
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed(monkeypatch, "", "hello", " ".join(["w"] * 100), "/reset", "again", "/exit", "unread")
    code, out, err = run_main(capsys, "chat", "--url", stand_in_http.url, "--system", "s")
    assert code == 0, err
    assert out == "Hello from the stand-in\nHello from the stand-in\n"
    lines = err.splitlines()
    assert lines[0] == f"chatting with stand-in ({stand_in_http.url}); /exit ends, /reset forgets"
    assert len(lines) == 2 and lines[1].startswith("error: the conversation is too long")


def test_chat_ends_on_ctrl_d(
    stand_in_http: StandInHTTP,  # noqa: F811
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    feed(monkeypatch)
    code, out, _ = run_main(capsys, "chat", "--url", stand_in_http.url, "--model", "x")
    assert code == 0 and out == "\n"


def test_chat_interrupted_answer(
    stand_in_http: StandInHTTP,  # noqa: F811
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import click

    feed(monkeypatch, "hi")
    echo = click.echo

    def ctrl_c_on_first_piece(message: object = None, **kw: Any) -> None:
        if message == "Hello":
            raise KeyboardInterrupt
        echo(message, **kw)

    monkeypatch.setattr(click, "echo", ctrl_c_on_first_piece)
    code, out, _ = run_main(capsys, "chat", "--url", stand_in_http.url)
    assert code == 0 and out == " [interrupted]\n\n"


# -- bench -------------------------------------------------------------------------------------


def test_bench_report(stand_in_http: StandInHTTP, capsys: Any) -> None:  # noqa: F811
    code, out, err = run_main(
        capsys, "bench", "--url", stand_in_http.url, "--num-prompts", "2", "--input-len", "3",
        "--output-len", "4", "--plot", "never.png",
    )  # fmt: skip
    assert code == 0, err
    assert "Serving Benchmark Result" in out and "Successful requests:" in out
    assert "note: the server has no /tokenize; --input-len counts words" in err
    if importlib_missing("matplotlib"):
        assert "note: --plot needs matplotlib, which is not installed; no plot written" in err
    else:
        assert "plot written to never.png" in err


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def test_bench_json_and_failures(
    stand_in_http: StandInHTTP,  # noqa: F811
    capsys: Any,
    tmp_path: Path,
) -> None:
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"prompt": "short one"}\n' + json.dumps({"prompt": " ".join(["w"] * 100)}))
    code, out, err = run_main(
        capsys, "bench", "--url", stand_in_http.url, "--num-prompts", "2", "--prompts-file",
        str(f), "--concurrency", "1", "--concurrency", "2", "--json",
    )  # fmt: skip
    assert code == 0, err
    data = json.loads(out)
    assert [d["max_concurrency"] for d in data] == [1, 2]
    assert all((d["completed"], d["failed"]) == (1, 1) for d in data)
    assert err.count("1 requests failed; first: HTTP 400") == 2
    assert "/tokenize" not in err


def test_bench_rate_must_be_positive(capsys: Any) -> None:
    code, _, err = run_main(capsys, "bench", "--url", "http://127.0.0.1:9", "--request-rate", "0")
    assert code == 2 and err.strip() == "error: --request-rate must be positive"
