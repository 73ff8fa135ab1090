"""``hpcserve tunnel``, ``env``, ``query``, ``chat`` and ``bench``: reach a job's API from here.

Options are parsed here and printed here; the work is in :mod:`hpcserve.net` (target and key
in ``target``, the tunnel's lifecycle in ``session``, the client settings in ``env``,
conversations in ``chat``, the benchmark in
``bench``).
"""

from __future__ import annotations

import json
import math
import sys

import click

from hpcserve.errors import UsageError


class ClickReporter:
    """The tunnel lifecycle's lines: notes to stderr, results to stdout."""

    def note(self, msg: str) -> None:
        click.echo(msg, err=True)

    def show(self, msg: str) -> None:
        click.echo(msg)


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
    from hpcserve.net import session

    if stop:
        gone = session.stop(job)
        click.echo(f"stopped the tunnel of {gone.job} ({gone.url}, pid {gone.pid})")
        return
    req = session.TunnelRequest(
        job=job,
        remote=remote,
        login=login_spec,
        local_port=local_port,
        via=via,
        background=background,
        child=child,
    )
    state = session.run(req, ClickReporter(), sys.argv[1:])
    if state is not None:
        click.echo(
            f"tunnel runs in the background (pid {state.pid}): {state.url}; "
            f"stop it with `hpcserve tunnel --stop {state.job}`"
        )


@click.command("env")
@click.argument("job")
@click.option("--json", "as_json", is_flag=True, help='Print {"base_url": ..., "api_key": ...}.')
def env(job: str, as_json: bool) -> None:
    """OPENAI_BASE_URL and OPENAI_API_KEY for JOB through its local tunnel (eval "$(...)")."""
    from hpcserve.net.env import client_env

    settings = client_env(job)
    click.echo(settings.to_json() if as_json else settings.shell(), nl=as_json)


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
    from hpcserve.net.chat import query_messages, sampling
    from hpcserve.net.target import open_client, resolve

    if len(args) > 2 or (len(args) == 2 and url):
        raise UsageError("give JOB and one PROMPT (quote the prompt), or --url and PROMPT")
    job, prompt = (None, args[0]) if len(args) == 1 else args
    t = resolve(job, url)
    messages = query_messages(prompt, system, image)
    params = sampling(max_tokens, temperature, model)
    with open_client(t, api_key_file) as c:
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
    from hpcserve.net.chat import Conversation, sampling
    from hpcserve.net.target import open_client, resolve

    t = resolve(job, url)
    with open_client(t, api_key_file) as c:
        conv = Conversation(c, system, sampling(max_tokens, temperature, model))
        click.echo(
            f"chatting with {conv.model} ({c.base_url}); /exit ends, /reset forgets", err=True
        )
        while True:
            try:
                line = input(">>> ")
            except (EOFError, KeyboardInterrupt):
                click.echo()
                return
            turn = conv.step(line, lambda piece: click.echo(piece, nl=False))
            if turn.kind == "exit":
                return
            if turn.kind == "answered":
                click.echo()
            elif turn.kind == "interrupted":
                click.echo(" [interrupted]")
            elif turn.kind == "failed":
                click.echo(f"error: {turn.error}", err=True)


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
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the random prompts; the K-th --concurrency (from 0) draws its own with seed+K.",
)
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
    from hpcserve.net.target import open_client, resolve

    spec = b.BenchSpec(
        concurrencies=concurrencies,
        request_rate=request_rate,
        num_prompts=num_prompts,
        input_len=input_len,
        output_len=output_len,
        prompts_file=prompts_file,
        ignore_eos=ignore_eos,
        model=model,
        seed=seed,
    )
    t = resolve(job, url)
    results = []
    with open_client(t, api_key_file) as c:
        plan = b.prepare(c, spec)
        if plan.tokenized is False:
            click.echo("note: the server has no /tokenize; --input-len counts words", err=True)
        for run in b.runs(c, plan, spec):
            results.append(run.metrics)
            if run.errors:
                click.echo(f"{len(run.errors)} requests failed; first: {run.errors[0]}", err=True)
            if not as_json:
                click.echo(b.format_report(run.metrics))
    if as_json:
        click.echo(b.results_json(results))
    if plot:
        if b.plot(results, plot) is None:
            click.echo(
                "note: --plot needs matplotlib, which is not installed; no plot written "
                "(pip install matplotlib)",
                err=True,
            )
        else:
            click.echo(f"plot written to {plot}", err=True)
