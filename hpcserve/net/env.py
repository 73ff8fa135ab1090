"""``hpcserve env NAME``: the base URL and API key an OpenAI client needs, for the local tunnel.

The URL is that of the job's (or service's) background tunnel on this machine, so it stays the
same across a service's handovers; the key is the job's own (its 0600 key file). Printed as
``export`` lines for a shell or as JSON.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass

from hpcserve.errors import HpcserveError

NO_KEY = "EMPTY"  # what OpenAI clients get when the server takes any key (vLLM's examples)


@dataclass(frozen=True)
class ClientEnv:
    """What an OpenAI client is configured with."""

    base_url: str  # .../v1
    api_key: str | None

    def shell(self) -> str:
        """``export OPENAI_BASE_URL=...`` and ``export OPENAI_API_KEY=...`` lines."""
        return (
            f"export OPENAI_BASE_URL={shlex.quote(self.base_url)}\n"
            f"export OPENAI_API_KEY={shlex.quote(self.api_key or NO_KEY)}\n"
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def client_env(ref: str) -> ClientEnv:
    """The local tunnel's base URL and the key of registered job ``ref`` (a name or id);
    HpcserveError when no background tunnel runs for it."""
    from hpcserve.net import tunnel
    from hpcserve.net.endpoint import tunnel_key
    from hpcserve.net.target import api_key_for, job_target

    t = job_target(ref)
    assert t.record is not None
    state = tunnel.read_state(tunnel_key(t.record))
    if state is None or state.status != "up":
        raise HpcserveError(
            f"no tunnel runs for {ref}: start one with `hpcserve tunnel {ref} --background`, "
            "then ask again"
        )
    return ClientEnv(state.url.rstrip("/") + "/v1", api_key_for(t, None))
