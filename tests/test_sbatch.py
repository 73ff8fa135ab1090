"""sbatch directives from one signature: keys, types, quoting, site extra lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpcserve.cluster.sbatch import parse_sbatch_args, sbatch_directives, valid_keys
from hpcserve.errors import UsageError

REPO = Path(__file__).resolve().parent.parent


def test_valid_keys_come_from_the_signature() -> None:
    keys = valid_keys()
    assert "extra" not in keys
    for key in ("time", "partition", "account", "qos", "gres", "gpus-per-node", "exclusive"):
        assert key in keys


def test_parse_converts_types_and_spellings() -> None:
    assert parse_sbatch_args(["cpus-per-task=8", "--exclusive=no", "mem=0", "mail_type=END"]) == {
        "cpus_per_task": 8,
        "exclusive": False,
        "mem": "0",
        "mail_type": "END",
    }


@pytest.mark.parametrize("arg", ["memory=1G", "extra=--x", "nocolon"])
def test_unknown_or_malformed_keys_list_valid_ones(arg: str) -> None:
    with pytest.raises(UsageError, match="valid keys: account, chdir"):
        parse_sbatch_args([arg])


def test_values_with_blanks_are_double_quoted_and_newlines_refused() -> None:
    out = sbatch_directives(job_name="j", nodes=1, time="10", comment="two words")
    assert '--comment="two words"' in out
    with pytest.raises(UsageError, match="one line"):
        sbatch_directives(job_name="j", nodes=1, time="10", comment="a\n#SBATCH --x")
    with pytest.raises(UsageError, match="double quotes"):
        sbatch_directives(job_name="j", nodes=1, time="10", comment='a "b"')


@pytest.mark.parametrize("time", ["30", "30:00", "02:00:00", "1-00:00:00", "2-12", "UNLIMITED"])
def test_slurm_time_formats(time: str) -> None:
    assert f"--time={time}" in sbatch_directives(job_name="j", nodes=1, time=time)


def test_bad_time_is_refused() -> None:
    with pytest.raises(UsageError, match="--time"):
        sbatch_directives(job_name="j", nodes=1, time="2 hours")


@pytest.mark.parametrize("line", ["hint=nomultithread", "-x", "--a\n--b", ""])
def test_extra_lines_must_be_one_long_option(line: str) -> None:
    with pytest.raises(UsageError, match="extra_sbatch"):
        sbatch_directives(job_name="j", nodes=1, time="10", extra=[line])


def test_render_imports_neither_paramiko_nor_requests() -> None:
    code = (
        "import sys; sys.path.insert(0, 'tests')\n"
        "from conftest import apptainer_site\n"
        "import hpcserve.cli.launch\n"
        "from hpcserve.launch.render import render, LaunchRequest\n"
        "render(apptainer_site(), LaunchRequest(model='m', nodes=2, job_dir='/j'))\n"
        "heavy = [m for m in ('paramiko', 'requests') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr
