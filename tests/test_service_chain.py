"""A service's chain from its log (hpcserve/service/chain.py) and the lead-time rule (lead.py)."""

from __future__ import annotations

import pytest

from hpcserve.errors import UsageError
from hpcserve.rules import (
    check_duration,
    format_duration_text,
    parse_duration_text,
    parse_until,
)
from hpcserve.service import chain, lead
from hpcserve.service.chain import fold, parse_log


def log(*lines: str) -> chain.ChainState:
    return fold(parse_log("\n".join(lines) + "\n"))


START = (
    "1000 service 101 name=qwen",
    "1000 submitted 101 by=user",
    "1030 started 101 restart=0 host=n1",
    "1090 ready 101 restart=0 addr=10.0.0.11 port=8012",
)


# -- DURATION (rules.py) -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("1m", 60), ("10m", 600), ("1h30m", 5400), ("2d", 172800), ("1d2h3m4s", 93784)],
)
def test_duration_text(text: str, seconds: int) -> None:
    assert parse_duration_text(text) == seconds
    assert check_duration(text) == seconds
    assert parse_duration_text(format_duration_text(seconds)) == seconds


@pytest.mark.parametrize("bad", ["", "10", "m", "1x", "1m1h", "-1m", "0s", "1.5h", "1 m"])
def test_bad_duration_is_one_line_naming_the_option(bad: str) -> None:
    with pytest.raises(UsageError) as e:
        check_duration(bad, "--idle-stop")
    msg = str(e.value)
    assert msg.startswith(f"--idle-stop {bad!r}: expected a duration") and "\n" not in msg


def test_until_takes_a_duration_or_a_date_in_the_future() -> None:
    now = 1_800_000_000.0
    assert parse_until("3d", now) == now + 3 * 86400
    assert parse_until("2030-01-01T00:00+00:00", now) == 1893456000.0
    with pytest.raises(UsageError, match="already passed"):
        parse_until("2020-01-01", now)
    with pytest.raises(UsageError, match="expected a date"):
        parse_until("next week", now)


# -- lead time ---------------------------------------------------------------------------------
def test_first_guess_then_the_measured_times() -> None:
    assert lead.lead_time_s([], None) == lead.FIRST_GUESS_S
    assert lead.lead_time_s([], 180) == 90  # a short job: at most half its limit
    assert lead.lead_time_s([60], 180) == 60 * 5 // 4 + lead.LEAD_MARGIN_S
    assert lead.lead_time_s([61], 180) == 77 + lead.LEAD_MARGIN_S  # rounded up
    # the slowest of the recent ones counts; an old slow one drops out
    many = [500, 40, 40, 40, 40, 41]
    assert lead.lead_time_s(many, None) == 52 + lead.LEAD_MARGIN_S


def test_submit_due_leaves_the_lead_time_and_the_drain_grace() -> None:
    assert not lead.submit_due(time_left_s=200, lead_s=100, grace_s=60)
    assert lead.submit_due(time_left_s=160, lead_s=100, grace_s=60)


# -- chain transitions -------------------------------------------------------------------------
def test_first_job_ready_is_current_and_its_startup_is_a_sample() -> None:
    st = log(*START)
    assert st.name == "qwen" and st.current == "101"
    assert st.samples() == [90.0]
    assert st.handovers == [] and st.gaps == [] and st.next_job is None


def test_handover_to_a_successor() -> None:
    st = log(
        *START,
        "1200 submitted 102 by=101",
        "1210 started 102 restart=0 host=n2",
    )
    assert st.current == "101" and st.next_job == "102"
    st = log(
        *START,
        "1200 submitted 102 by=101",
        "1270 ready 102 restart=0 addr=10.0.0.12 port=8034",
        "1271 draining 101 for=102",
        "1290 ended 101 cause=handover rc=0",
    )
    assert st.current == "102" and st.next_job is None
    assert st.handovers == [chain.Handover("101", "102", 1270.0)]
    assert st.gaps == []
    assert st.samples() == [90.0, 70.0]
    assert st.jobs["101"].end_cause == "handover"


def test_a_successor_late_for_the_time_limit_is_a_gap_until_it_serves() -> None:
    st = log(
        *START,
        "1200 submitted 102 by=101",
        "1300 ended 101 cause=signal rc=143",
    )
    assert st.current is None and st.next_job == "102"
    gap = st.open_gap
    assert gap is not None and gap.start == 1300.0
    assert gap.cause == "job 101 ended (signal) before job 102 was ready"
    st = log(
        *START,
        "1200 submitted 102 by=101",
        "1300 ended 101 cause=signal rc=143",
        "1400 ready 102 restart=0 addr=10.0.0.12 port=8034",
    )
    assert st.current == "102" and st.open_gap is None
    assert (st.gaps[0].start, st.gaps[0].end) == (1300.0, 1400.0)
    assert st.handovers == []  # the chain resumed; nothing was handed over


def test_requeue_of_the_current_job_is_a_gap_with_its_cause() -> None:
    st = log(*START, "1500 started 101 restart=1 host=n3")
    assert st.current is None
    assert st.open_gap is not None and st.open_gap.cause == "job 101 was requeued (restart 1)"
    st = log(
        *START,
        "1490 ended 101 cause=signal rc=143",
        "1500 started 101 restart=1 host=n3",
        "1560 ready 101 restart=1 addr=10.0.0.13 port=8050",
    )
    assert st.current == "101" and st.jobs["101"].restarts == 1
    assert st.jobs["101"].addr == "10.0.0.13"
    assert [(g.start, g.end, g.cause) for g in st.gaps] == [
        (1490.0, 1560.0, "job 101 was requeued (restart 1)")
    ]
    assert st.samples() == [90.0]  # a requeue is not a submit-to-ready measurement


def test_a_stopped_chain_has_no_gap_and_says_why() -> None:
    st = log(*START, "1500 stopped 101 cause=idle", "1510 ended 101 cause=idle rc=0")
    assert st.stopped is not None and st.stopped.fields["cause"] == "idle"
    assert st.gaps == [] and st.current is None
    st = log(*START, "1500 stopped user cause=cancel", "1505 ended 101 cause=signal rc=143")
    assert st.gaps == []


def test_until_and_submit_failures_are_kept() -> None:
    st = log(
        "1000 service 101 name=qwen until=5000",
        *START[1:],
        "1300 submit-failed 101 error=sbatch:_error:_Batch_job_submission_failed",
        "1400 until 101",
    )
    assert st.until == 5000.0 and st.until_reached
    assert st.notes == [
        "job 101 could not submit its successor: sbatch: error: Batch job submission failed"
    ]


def test_lines_that_are_not_events_are_skipped() -> None:
    st = log(*START, "garbage", "12 34", "1100 ready")
    assert st.current == "101" and list(st.jobs) == ["101"]


def test_current_file() -> None:
    assert chain.parse_current("102 10.0.0.12 8034 0\n") == ("102", "10.0.0.12", 8034, 0)
    assert chain.parse_current("102 10.0.0.12") is None
    assert chain.parse_current("") is None
