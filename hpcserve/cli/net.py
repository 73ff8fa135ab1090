"""``hpcserve tunnel``, ``query``, ``chat`` and ``bench``: reach a job's API from here."""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import click

from hpcserve.errors import HpcserveError, UsageError


@dataclass
class Target:
    """What a command talks to: a job from the registry, or a bare URL."""

    key: str  # job id, or a name derived from the URL/remote (for state files)
    record: Any = None
    site: Any = None
    url: str | None = None

    @property
    def phase(self) -> str | None:
        extra = getattr(self.record, "extra", None) or {}
        phase = extra.get("phase")
        return str(phase) if phase else None


def _resolve(job: str | None, url: str | None) -> Target:
    if url:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--url must look like http://HOST:PORT, not {url!r}")
        return Target(key="url", url=url.rstrip("/").removesuffix("/v1"))
    if not job:
        raise UsageError("name a job (id or name from `hpcserve list`) or give --url")
    from hpcserve.jobs.registry import Registry
    from hpcserve.sites.loader import load_site

    rec = Registry().get(job)
    return Target(key=rec.job_id, record=rec, site=load_site(rec.site))


def _key_for(t: Target, api_key_file: str | None) -> str | None:
    if api_key_file:
        try:
            with open(os.path.expanduser(api_key_file)) as f:
                return f.read().strip() or None
        except OSError as e:
            raise UsageError(f"cannot read --api-key-file {api_key_file}: {e.strerror}") from e
    if t.record is not None:
        from hpcserve.net.endpoint import api_key

        return api_key(t.record)
    return os.environ.get("HPCSERVE_API_KEY") or None


@contextlib.contextmanager
def _base_url(t: Target) -> Iterator[str]:
    if t.url:
        yield t.url
        return
    from hpcserve.net.endpoint import api_base

    with api_base(t.record, t.site) as base:
        yield base


def _parse_remote(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--remote must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def _login(t: Target, login: str | None) -> Any:
    from hpcserve.cluster import ssh
    from hpcserve.cluster.sshconfig import parse_hop_spec

    if login:
        user, host, port = parse_hop_spec(login)
        return ssh.Login(host=host, user=user, port=port)
    if t.site is None:
        raise UsageError("--remote without a JOB needs --login [user@]host[:port]")
    return ssh.login_from_site(t.site)


def _check_api(url: str, key: str | None, phase: str | None) -> None:
    from hpcserve.net.api import ApiError, Client

    c = Client(url, key, timeout=30, phase=phase)
    try:
        c.health()
        models = c.models()
        click.echo(f"server healthy; models: {', '.join(models) or 'none'}", err=True)
    except ApiError as e:
        click.echo(f"warning: {e}", err=True)
    click.echo(f"OpenAI base URL: {url}/v1")
    if key:
        click.echo(f"API key: {key}")
    else:
        click.echo("API key: none (any value works)")


API_KEY_FILE = click.option(
    "--api-key-file",
    type=click.Path(dir_okay=False),
    help="File holding the API key (default: the job's key; with --url: $HPCSERVE_API_KEY).",
)
URL = click.option("--url", help="Talk to http://HOST:PORT directly instead of a registered job.")


@click.command()
@click.argument("job", required=False)
@click.option(
    "--local-port",
    type=click.IntRange(1, 65535),
    help="Local port (default: the job's API port, or a free one when that is taken).",
)
@click.option("--remote", help="Forward to HOST:PORT instead of the job's head address.")
@click.option("--login", "login_spec", help="Login host [user@]host[:port] (default: the site's).")
@click.option("--background", is_flag=True, help="Leave the tunnel running; stop with --stop.")
@click.option("--stop", is_flag=True, help="Stop the background tunnel of JOB (or the only one).")
@click.option(
    "--via",
    type=click.Choice(["paramiko", "openssh"]),
    default="paramiko",
    show_default=True,
    help="Forward with paramiko, or run `ssh -N -L`.",
)
@click.option("--child", is_flag=True, hidden=True)
def tunnel(
    job: str | None,
    local_port: int | None,
    remote: str | None,
    login_spec: str | None,
    background: bool,
    stop: bool,
    via: str,
    child: bool,
) -> None:
    """Forward 127.0.0.1:LOCAL to JOB's API through the login node (Ctrl-C ends it)."""
    from hpcserve.net import tunnel as tn

    if stop:
        _stop(job)
        return
    if job is None and remote is None:
        raise UsageError("name a JOB, or give --remote HOST:PORT with --login")
    t = _resolve(job, None) if job else Target(key="")
    if remote:
        addr, port = _parse_remote(remote)
    else:
        from hpcserve.net.endpoint import remote_of

        addr, port = remote_of(t.record)
    if not t.key:
        t.key = f"remote-{addr}-{port}"
    key = _key_for(t, None) if t.record is not None else None
    running = tn.read_state(t.key)
    if running is not None and not child:
        raise UsageError(
            f"a background tunnel for {t.key} already runs on {running.url} (pid {running.pid}); "
            f"stop it with `hpcserve tunnel --stop {t.key}`"
        )
    if background and not child:
        _spawn_background(t.key)
        return
    login = _login(t, login_spec)
    explicit = local_port is not None
    want = local_port if local_port is not None else port
    if via == "openssh":
        _run_openssh(t, login, want, explicit, (addr, port), key, child)
    else:
        _run_paramiko(t, login, want, explicit, (addr, port), key, child)


def _announce(t: Any, tkey: str, url: str, remote: tuple[str, int], via: str, child: bool) -> None:
    from hpcserve.net import tunnel as tn

    if child:
        tn.write_state(tn.TunnelState(
            job=tkey, pid=os.getpid(), local_port=int(url.rsplit(":", 1)[1]),
            remote=f"{remote[0]}:{remote[1]}", url=url, via=via, status="up",
            started_at=time.time(),
        ))  # fmt: skip
        _detach_stdio(tn.tunnels_dir() / f"{tkey}.log")


def _detach_stdio(log_path: Any) -> None:
    """After the background tunnel is up: stdin from /dev/null, output to its log file."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.close(null)


def _run_paramiko(
    t: Target,
    login: Any,
    port: int,
    explicit: bool,
    remote: tuple[str, int],
    key: str | None,
    child: bool,
) -> None:
    from hpcserve.cluster import ssh
    from hpcserve.net import tunnel as tn

    fwd = tn.Forwarder(lambda: ssh.connect(login), remote, port, explicit_port=explicit)
    _hold_tunnel(
        t,
        fwd,
        lambda: (
            f"tunnel up: 127.0.0.1:{fwd.local_port} -> {remote[0]}:{remote[1]} via {login.host}"
        ),
        remote,
        "paramiko",
        key,
        child,
        ctrl_c_hint=True,
    )


def _run_openssh(
    t: Target,
    login: Any,
    port: int,
    explicit: bool,
    remote: tuple[str, int],
    key: str | None,
    child: bool,
) -> None:
    from hpcserve.cluster import ssh
    from hpcserve.net import tunnel as tn

    if not tn.port_is_free(port):
        if explicit:
            raise UsageError(f"local port {port} is already in use; pick another --local-port")
        new = tn.free_port()
        click.echo(f"local port {port} is in use; using {new} instead", err=True)
        port = new
    route, extra = ssh.route_for(login)
    known = ssh.known_hosts_files(route.target, extra)
    proc = tn.OpensshTunnel(tn.openssh_argv(route, port, remote, known), port)
    _hold_tunnel(
        t,
        proc,
        lambda: f"tunnel up (openssh): {proc.url} -> {remote[0]}:{remote[1]}",
        remote,
        "openssh",
        key,
        child,
        ctrl_c_hint=False,
    )


def _hold_tunnel(
    t: Target,
    tunnel: Any,
    up_line: Callable[[], str],
    remote: tuple[str, int],
    via: str,
    key: str | None,
    child: bool,
    ctrl_c_hint: bool,
) -> None:
    """Start ``tunnel`` (a paramiko Forwarder or an OpensshTunnel), say so (``up_line`` once it
    is up), check the API, announce it, and hold it until Ctrl-C/SIGTERM or its end; then stop
    it and, in a background child, clear its state file."""
    from hpcserve.net import tunnel as tn

    with tn.sigterm_as_interrupt():
        try:
            tunnel.start()
            click.echo(up_line(), err=True)
            _check_api(tunnel.url, key, t.phase)
            _announce(t, t.key, tunnel.url, remote, via, child)
            if ctrl_c_hint and not child:
                click.echo("Ctrl-C closes the tunnel.", err=True)
            tunnel.wait()
        except KeyboardInterrupt:
            pass
        finally:
            tunnel.stop()
            if child:
                tn.clear_state(t.key)
    click.echo("tunnel closed", err=True)


def _spawn_background(tkey: str) -> None:
    from hpcserve.net import tunnel as tn

    argv = [
        sys.executable,
        "-m",
        "hpcserve",
        *[a for a in sys.argv[1:] if a != "--background"],
        "--child",
    ]
    tn.clear_state(tkey)
    proc = subprocess.Popen(argv, start_new_session=True)  # prompts still reach this terminal
    while True:
        state = tn.read_state(tkey)
        if state is not None and state.status == "up":
            click.echo(
                f"tunnel runs in the background (pid {state.pid}): {state.url}; "
                f"stop it with `hpcserve tunnel --stop {tkey}`"
            )
            return
        if proc.poll() is not None:
            raise HpcserveError(
                f"the background tunnel exited ({proc.returncode}) before it was up"
            )
        time.sleep(0.2)


def _stop(job: str | None) -> None:
    from hpcserve.net import tunnel as tn

    if job is None:
        running = tn.running_tunnels()
        if not running:
            raise UsageError("no background tunnel runs")
        if len(running) > 1:
            names = ", ".join(f"{s.job} ({s.url})" for s in running)
            raise UsageError(f"several background tunnels run: {names}; name the one to stop")
        job = running[0].job
    elif tn.read_state(job) is None:
        with contextlib.suppress(Exception):
            job = _resolve(job, None).key
    state = tn.stop_tunnel(job)
    click.echo(f"stopped the tunnel of {state.job} ({state.url}, pid {state.pid})")


def _client(t: Target, base: str, api_key_file: str | None) -> Any:
    from hpcserve.net.api import Client

    return Client(base, _key_for(t, api_key_file), phase=t.phase)


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="[JOB] PROMPT")
@click.option("--system", help="System message.")
@click.option("--max-tokens", type=click.IntRange(1), default=512, show_default=True)
@click.option("--temperature", type=float, default=None)
@click.option("--image", help="Image file or URL (multimodal models).")
@click.option("--model", help="Model name (default: the server's first model).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON response.")
@URL
@API_KEY_FILE
def query(
    args: tuple[str, ...],
    system: str | None,
    max_tokens: int,
    temperature: float | None,
    image: str | None,
    model: str | None,
    as_json: bool,
    url: str | None,
    api_key_file: str | None,
) -> None:
    """Send PROMPT to JOB as a chat completion and stream the answer."""
    from hpcserve.net.api import user_message

    if len(args) > 2 or (len(args) == 2 and url):
        raise UsageError("give JOB and one PROMPT (quote the prompt), or --url and PROMPT")
    job, prompt = (None, args[0]) if len(args) == 1 else args
    t = _resolve(job, url)
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    messages.append(user_message(prompt, image))
    params: dict[str, Any] = {"max_tokens": max_tokens, "model": model}
    if temperature is not None:
        params["temperature"] = temperature
    with _base_url(t) as base:
        c = _client(t, base, api_key_file)
        if as_json:
            click.echo(json.dumps(c.chat(messages, **params), indent=2))
            return
        for piece in c.chat_stream(messages, **params):
            click.echo(piece, nl=False)
        click.echo()


@click.command()
@click.argument("job", required=False)
@click.option("--system", help="System message.")
@click.option("--max-tokens", type=click.IntRange(1), default=512, show_default=True)
@click.option("--temperature", type=float, default=None)
@click.option("--model", help="Model name (default: the server's first model).")
@URL
@API_KEY_FILE
def chat(
    job: str | None,
    system: str | None,
    max_tokens: int,
    temperature: float | None,
    model: str | None,
    url: str | None,
    api_key_file: str | None,
) -> None:
    """Interactive multi-turn chat with JOB (/exit or Ctrl-D ends it, /reset forgets)."""
    from hpcserve.net.api import ApiError, StreamResult

    t = _resolve(job, url)
    base_msgs: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    history = list(base_msgs)
    params: dict[str, Any] = {"max_tokens": max_tokens}
    if temperature is not None:
        params["temperature"] = temperature
    with _base_url(t) as base:
        c = _client(t, base, api_key_file)
        params["model"] = c.default_model(model)
        click.echo(
            f"chatting with {params['model']} ({base}); /exit ends, /reset forgets", err=True
        )
        while True:
            try:
                line = input(">>> ")
            except (EOFError, KeyboardInterrupt):
                click.echo()
                return
            if line.strip() in ("/exit", "/quit"):
                return
            if line.strip() == "/reset":
                history = list(base_msgs)
                continue
            if not line.strip():
                continue
            history.append({"role": "user", "content": line})
            res = StreamResult()
            try:
                for piece in c.chat_stream(history, res, **params):
                    click.echo(piece, nl=False)
                click.echo()
            except ApiError as e:
                history.pop()
                click.echo(f"error: {e}", err=True)
                continue
            except KeyboardInterrupt:
                click.echo(" [interrupted]")
            history.append({"role": "assistant", "content": res.text})


@click.command()
@click.argument("job", required=False)
@click.option(
    "--concurrency",
    "concurrencies",
    type=click.IntRange(1),
    multiple=True,
    help="Maximum requests in flight; repeat for several runs (default 1).",
)
@click.option(
    "--request-rate",
    type=float,
    default=math.inf,
    help="Poisson arrival rate in req/s (default: all at once, gated by concurrency).",
)
@click.option("--num-prompts", type=click.IntRange(1), default=50, show_default=True)
@click.option(
    "--input-len",
    type=click.IntRange(1),
    default=128,
    show_default=True,
    help="Random prompt length in tokens (sized with the server's /tokenize).",
)
@click.option("--output-len", type=click.IntRange(1), default=128, show_default=True)
@click.option(
    "--prompts-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Prompts, one per line or JSON lines with 'prompt'.",
)
@click.option(
    "--ignore-eos/--no-ignore-eos",
    default=True,
    show_default=True,
    help="Generate exactly --output-len tokens (vLLM's ignore_eos).",
)
@click.option("--model", help="Model name (default: the server's first model).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON (vLLM's keys).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a PNG (needs matplotlib).")
@URL
@API_KEY_FILE
def bench(
    job: str | None,
    concurrencies: tuple[int, ...],
    request_rate: float,
    num_prompts: int,
    input_len: int,
    output_len: int,
    prompts_file: str | None,
    ignore_eos: bool,
    model: str | None,
    seed: int,
    as_json: bool,
    plot: str | None,
    url: str | None,
    api_key_file: str | None,
) -> None:
    """Benchmark JOB's server with `vllm bench serve`'s metrics (TTFT, TPOT, ITL, throughput)."""
    from hpcserve.net import bench as b

    if request_rate <= 0:
        raise UsageError("--request-rate must be positive")
    t = _resolve(job, url)
    results = []
    with _base_url(t) as base:
        c = _client(t, base, api_key_file)
        c.health()
        name = c.default_model(model)
        if prompts_file:
            prompts = b.file_prompts(prompts_file, num_prompts, output_len)
        else:
            tpw = b.tokens_per_word(base, name, c.api_key, seed)
            if tpw is None:
                click.echo("note: the server has no /tokenize; --input-len counts words", err=True)
            prompts = b.random_prompts_tokens(num_prompts, input_len, output_len, tpw, seed)
        for conc in concurrencies or (1,):
            outs, dur = b.run_load(
                base,
                prompts,
                model=name,
                api_key=c.api_key,
                concurrency=conc,
                request_rate=request_rate,
                seed=seed,
                ignore_eos=ignore_eos,
            )
            m = b.compute_metrics(outs, dur, max_concurrency=conc, request_rate=request_rate)
            results.append(m)
            errors = [o.error for o in outs if not o.success]
            if errors:
                click.echo(f"{len(errors)} requests failed; first: {errors[0]}", err=True)
            if not as_json:
                click.echo(b.format_report(m))
    if as_json:
        data = [m.to_dict() for m in results]
        click.echo(json.dumps(data[0] if len(data) == 1 else data, indent=2))
    if plot:
        if b.plot(results, plot) is None:
            click.echo(
                "note: --plot needs matplotlib, which is not installed; no plot written "
                "(pip install matplotlib)",
                err=True,
            )
        else:
            click.echo(f"plot written to {plot}", err=True)
