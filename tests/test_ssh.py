"""SSH config resolution (pure) and paramiko connections to real sshd processes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from net_fixtures import SshLab, keygen, ssh_lab  # noqa: F401

from hpcserve.cluster.sshconfig import Overrides, parse_hop_spec, resolve
from hpcserve.errors import HpcserveError, UsageError

if TYPE_CHECKING:
    from net_fixtures import Sshd

    from hpcserve.cluster.ssh import SshExecutor

CONFIG = """
Host login
  HostName 10.0.0.5
  Port 2222
  IdentityFile ~/.ssh/a
  ProxyJump gw1,bob@gw2:2200
Host gw1
  HostName gw.example
  User gwuser
  ProxyJump bastion
Host *.cluster !skip.cluster
  User clusteruser
Host *
  IdentityFile ~/.ssh/common
  ServerAliveInterval 15
"""


def test_config_values_and_site_defaults() -> None:
    r = resolve("login", config_text=CONFIG, site_user="siteuser", site_port=22)
    t = r.target
    assert (t.hostname, t.port, t.user) == ("10.0.0.5", 2222, "siteuser")
    assert t.identity_files[0].endswith("/.ssh/a") and t.identity_files[1].endswith("/common")
    assert "~" not in t.identity_files[0]
    assert t.keepalive_s == 15
    assert t.known_hosts_name == "[10.0.0.5]:2222"


def test_proxyjump_hops_resolved_through_config() -> None:
    r = resolve("login", config_text=CONFIG)
    names = [(h.hostname, h.port) for h in r.jumps]
    # gw1 has its own ProxyJump (bastion); gw2 is given with user and port
    assert names == [("bastion", 22), ("gw.example", 22), ("gw2", 2200)]
    assert r.jumps[1].user == "gwuser" and r.jumps[2].user == "bob"


def test_precedence_command_line_config_site() -> None:
    r = resolve(
        "login", config_text=CONFIG, site_port=9999, site_jump="x",
        overrides=Overrides(user="me", port=2022, jump="none"),
    )  # fmt: skip
    assert (r.target.user, r.target.port, r.jumps) == ("me", 2022, ())
    # config says nothing about this host: the site's values apply
    r2 = resolve("other.host", config_text=CONFIG, site_user="su", site_port=2200, site_jump="j")
    assert (r2.target.user, r2.target.port) == ("su", 2200)
    assert [h.hostname for h in r2.jumps] == ["j"]


def test_patterns_and_negation() -> None:
    assert resolve("a.cluster", config_text=CONFIG).target.user == "clusteruser"
    assert resolve("skip.cluster", config_text=CONFIG, site_user="s").target.user == "s"


def test_include(tmp_path: Path) -> None:
    (tmp_path / "inc.conf").write_text("Host inc\n  HostName included.example\n  Port 2\n")
    text = f"Include {tmp_path}/*.conf\nHost other\n  Port 3\n"
    assert resolve("inc", config_text=text).target.hostname == "included.example"
    assert resolve("other", config_text=text).target.port == 3


def test_hop_spec_errors() -> None:
    assert parse_hop_spec("u@h:22") == ("u", "h", 22)
    assert parse_hop_spec("[::1]:2200") == (None, "::1", 2200)
    with pytest.raises(UsageError):
        parse_hop_spec("h:notaport")


# -- against real sshd ------------------------------------------------------------------------


def test_connect_run_and_sftp(ssh_lab: SshLab) -> None:  # noqa: F811
    from hpcserve.cluster.ssh import SshExecutor

    ssh_lab.add("login")
    ssh_lab.write_known_hosts("login")
    ssh_lab.write_config()
    ex = SshExecutor(login="login", prompter=None)
    try:
        r = ex.run(["sh", "-c", "cat; echo err >&2; exit 3"], input="in put")
        assert (r.returncode, r.stdout, r.stderr.strip()) == (3, "in put", "err")
        assert ex.run(["echo", "a b; $HOME"]).stdout == "a b; $HOME\n"  # quoted, not expanded
        d = ssh_lab.dir / "remote" / "x"
        ex.makedirs(str(d))
        ex.write_text(str(d / "f.txt"), "secret")
        assert ex.read_text(str(d / "f.txt")) == "secret"
        assert (d / "f.txt").stat().st_mode & 0o777 == 0o600
        assert ex.exists(str(d / "f.txt")) and not ex.exists(str(d / "nope"))
        first = ex.client()
        ex.run(["true"])
        assert ex.client() is first  # one connection for the object's lifetime
    finally:
        ex.close()


def test_proxyjump_through_second_sshd(ssh_lab: SshLab) -> None:  # noqa: F811
    from hpcserve.cluster.ssh import connect

    login = ssh_lab.add("login")
    jump = ssh_lab.add("jump")
    ssh_lab.write_known_hosts("login", "jump")
    ssh_lab.write_config(
        f"Host viajump\n  HostName 127.0.0.1\n  Port {login.port}\n  ProxyJump jump\n"
    )
    c = connect("viajump", prompter=None)
    try:
        assert len(c.route.jumps) == 1
        _, out, _ = c.exec_command("echo through")
        assert out.read() == b"through\n"
    finally:
        c.close()
    log = jump.log.read_text()
    assert "direct-tcpip" in log and f"port {login.port}" in log


def test_unknown_host_key_refused(ssh_lab: SshLab) -> None:  # noqa: F811
    from hpcserve.cluster.ssh import HostKeyError, connect, fingerprint

    s = ssh_lab.add("login")
    ssh_lab.known_hosts.write_text("")
    ssh_lab.write_config()
    with pytest.raises(HostKeyError) as ei:
        connect("login", prompter=None)
    msg = str(ei.value)
    import paramiko

    fp = fingerprint(paramiko.PKey.from_path(str(s.host_key)))
    assert "not known" in msg and fp in msg
    assert f"ssh-keyscan -p {s.port} 127.0.0.1 >> ~/.ssh/known_hosts" in msg
    assert ssh_lab.known_hosts.read_text() == ""  # nothing was added


def test_changed_host_key_refused(ssh_lab: SshLab) -> None:  # noqa: F811
    from hpcserve.cluster.ssh import HostKeyError, connect

    s = ssh_lab.add("login")
    other = ssh_lab.dir / "other_key"
    keygen(other)
    pub = Path(f"{other}.pub").read_text().split()
    line = f"[127.0.0.1]:{s.port} {pub[0]} {pub[1]}\n"
    ssh_lab.known_hosts.write_text(line)
    ssh_lab.write_config()
    with pytest.raises(HostKeyError) as ei:
        connect("login", prompter=None)
    assert "HAS CHANGED" in str(ei.value)
    assert ssh_lab.known_hosts.read_text() == line  # never overwritten


def test_hashed_known_hosts_and_env_file(
    ssh_lab: SshLab,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hpcserve.cluster.ssh import connect

    ssh_lab.add("login")
    ssh_lab.write_known_hosts("login")
    hashed = ssh_lab.dir / "site_known_hosts"
    hashed.write_text(ssh_lab.known_hosts.read_text())
    subprocess.run(["ssh-keygen", "-H", "-f", str(hashed)], check=True, capture_output=True)
    assert "127.0.0.1" not in hashed.read_text()
    ssh_lab.known_hosts.write_text("")
    ssh_lab.write_config()
    monkeypatch.setenv("HPCSERVE_KNOWN_HOSTS", str(hashed))
    c = connect("login", prompter=None)
    c.close()


def test_refused_key_is_a_sentence(ssh_lab: SshLab) -> None:  # noqa: F811
    from hpcserve.cluster.ssh import connect

    ssh_lab.add("login")
    ssh_lab.write_known_hosts("login")
    wrong = ssh_lab.dir / "wrong"
    keygen(wrong)
    ssh_lab.write_config(f"Host login\n  IdentityFile {wrong}\n")
    text = ssh_lab.ssh_config.read_text().replace(f"  IdentityFile {ssh_lab.key}\n", "")
    ssh_lab.ssh_config.write_text(text)
    with pytest.raises(HpcserveError, match="was refused"):
        connect("login", prompter=None)


class FakeTransport:
    """Records the authentication dialogue of a site asking for a key, then a one-time code."""

    def __init__(self) -> None:
        self.authed = False
        self.answers: list[str] = []

    def auth_none(self, user: str) -> None:
        import paramiko

        raise paramiko.BadAuthenticationType("no", ["publickey", "keyboard-interactive"])

    def auth_publickey(self, user: str, key: object) -> list[str]:
        return ["keyboard-interactive"]  # partial success: a second factor is required

    def auth_interactive(self, user: str, handler, submethods: str = "") -> list[str]:  # type: ignore[no-untyped-def]
        self.answers = handler("Two-factor", "", [("Verification code: ", False)])
        self.authed = self.answers == ["123456"]
        return []

    def is_authenticated(self) -> bool:
        return self.authed


def test_keyboard_interactive_prompts_for_one_time_code(tmp_path: Path) -> None:
    from hpcserve.cluster.ssh import _authenticate
    from hpcserve.cluster.sshconfig import Hop

    key = tmp_path / "k"
    keygen(key)
    asked: list[tuple[str, bool]] = []

    def prompter(text: str, echo: bool) -> str:
        asked.append((text, echo))
        return "123456"

    hop = Hop("login", "h", 22, "u", identity_files=(str(key),), identities_only=True)
    t = FakeTransport()
    _authenticate(t, hop, prompter)  # type: ignore[arg-type]
    assert t.authed and asked == [("Verification code: ", False)]


def test_keyboard_interactive_without_terminal_is_a_sentence(tmp_path: Path) -> None:
    from hpcserve.cluster.ssh import _authenticate, terminal_prompter
    from hpcserve.cluster.sshconfig import Hop

    hop = Hop("login", "h", 22, "u", identity_files=(), identities_only=True)
    with pytest.raises(UsageError, match="no terminal"):
        _authenticate(FakeTransport(), hop, terminal_prompter)  # type: ignore[arg-type]


# -- faults: the login node's sshd restarted, sessions dropped (docs/reliability.md) -----------


@pytest.fixture
def login(ssh_lab: SshLab) -> Iterator[tuple[Sshd, SshExecutor]]:  # noqa: F811
    """A real sshd as the login node (its host key known) and an executor through it."""
    from hpcserve.cluster.ssh import SshExecutor

    server = ssh_lab.add("login")
    ssh_lab.write_known_hosts("login")
    ssh_lab.write_config()
    ex = SshExecutor(login="login", prompter=None)
    try:
        yield server, ex
    finally:
        ex.close()


def test_dropped_connection_mid_command_is_unreachable_then_reconnects(
    login: tuple[Sshd, SshExecutor],
) -> None:
    import threading

    from hpcserve.errors import Unreachable

    server, ex = login
    assert ex.run(["true"]).ok
    threading.Timer(0.5, server.kill_sessions).start()
    with pytest.raises(Unreachable, match="dropped while `sleep 30` ran"):
        ex.run(["sleep", "30"])
    assert ex.run(["echo", "back"]).stdout == "back\n"  # a new connection, same executor


def test_stopped_sshd_is_unreachable_and_a_restarted_one_is_used_again(
    login: tuple[Sshd, SshExecutor],
) -> None:
    from hpcserve.errors import Unreachable

    server, ex = login
    assert ex.run(["true"]).ok
    server.stop()
    with pytest.raises(Unreachable):
        ex.run(["true"])
    with pytest.raises(Unreachable):
        ex.read_text("/etc/hostname")
    server.start()
    assert ex.run(["echo", "again"]).stdout == "again\n"
    assert ex.read_text(str(server.config)).startswith("Port ")


def test_write_failure_says_what_the_login_node_says(
    ssh_lab: SshLab,  # noqa: F811
    login: tuple[Sshd, SshExecutor],
) -> None:
    _server, ex = login
    blocker = ssh_lab.dir / "a-file"
    blocker.write_text("not a directory\n")
    with pytest.raises(HpcserveError, match=r"\(sh: .*: Directory nonexistent\)") as e:
        ex.write_text(str(blocker / "job" / "launcher.sbatch"), "#!/bin/bash\n")
    assert "\n" not in str(e.value)
