"""Step 1, here: the site file is valid, its must-have values are set, the login host's key
is known (the same known_hosts files :mod:`hpcserve.cluster.ssh` verifies it against)."""

from __future__ import annotations

from hpcserve.doctor.checks import Check, failed, passed, skipped
from hpcserve.errors import ConfigError, UsageError
from hpcserve.sites.schema import Site

SITE = "site file"
VALUES = "must-have values"
HOST_KEY = "login host key"


def site_check(site: str | Site) -> tuple[Site | None, Check]:
    """The site (by name or YAML file, as every command loads it) and whether it is valid."""
    from hpcserve.client import load_site

    if isinstance(site, Site):
        return site, passed(SITE, f"site {site.name} given as a Site", path=site.path)
    try:
        s = load_site(site)
    except ConfigError as e:
        return None, failed(
            SITE,
            f"site {site} has {len(e.problems)} problem(s): " + "; ".join(e.problems),
            "correct the lines named (`hpcserve sites validate FILE` checks a file)",
        )
    except UsageError as e:
        return None, failed(SITE, str(e), "`hpcserve sites list` shows the sites known here")
    return s, passed(SITE, f"{s.path or s.name} is valid", path=s.path)


def values_check(site: Site) -> Check:
    """Every must-have value is set (what ``submit`` refuses without)."""
    from hpcserve.sites.loader import missing_values

    missing = missing_values(site)
    if not missing:
        return passed(VALUES, "all set")
    return failed(
        VALUES,
        ", ".join(m.field for m in missing) + " not set",
        " | ".join(m.message() for m in missing),
        missing=[m.field for m in missing],
    )


def host_key_check(site: Site) -> Check:
    """Every hop to the first login host has a key in the known_hosts files SSH would read."""
    from hpcserve.cluster.connect import submits_locally

    if submits_locally(site):
        mode = site.scheduler.submit
        return skipped(HOST_KEY, f"sbatch runs on this machine (scheduler.submit {mode})")
    from hpcserve.cluster.ssh import (
        accept_key_hint,
        known_hosts_files,
        load_host_keys,
        login_from_site,
        route_for,
    )

    try:
        route, extra = route_for(login_from_site(site))
        hops = [(hop, known_hosts_files(hop, extra)) for hop in route.hops]
        unknown = [(h, f) for h, f in hops if load_host_keys(f).lookup(h.known_hosts_name) is None]
    except UsageError as e:
        return failed(HOST_KEY, str(e), "correct the site's login section or ~/.ssh/config")
    if unknown:
        hop, files = unknown[0]
        return failed(
            HOST_KEY,
            f"no key for {hop.known_hosts_name} in {', '.join(files) or '~/.ssh/known_hosts'}",
            "check its fingerprint with your site's documentation, then " + accept_key_hint(hop),
        )
    return passed(HOST_KEY, "known for " + ", ".join(h.known_hosts_name for h, _ in hops))
