from etl.ops.health import assess

NOW = 10_000.0


def test_healthy_when_recent_fetch_and_commit() -> None:
    v = assess(
        waiting=50, heartbeats={"fetch:a": NOW - 3, "commit:a": NOW - 1}, now=NOW, max_idle=300, fetch_interval=5
    )
    assert v.healthy and v.facts["last_commit_age_s"] == 1


def test_idle_is_fine_when_nothing_waits() -> None:
    v = assess(
        waiting=0, heartbeats={"fetch:a": NOW - 3, "commit:a": NOW - 9999}, now=NOW, max_idle=300, fetch_interval=5
    )
    assert v.healthy


def test_backlog_without_commits_is_unhealthy() -> None:
    v = assess(
        waiting=7, heartbeats={"fetch:a": NOW - 3, "commit:a": NOW - 400}, now=NOW, max_idle=300, fetch_interval=5
    )
    assert not v.healthy and "7 messages wait" in v.reasons[0]


def test_no_fetch_means_beat_is_down() -> None:
    v = assess(waiting=0, heartbeats={"fetch:a": NOW - 120}, now=NOW, max_idle=300, fetch_interval=5)
    assert not v.healthy and "beat" in v.reasons[0]


def test_one_stuck_worker_among_busy_ones() -> None:
    beats = {"start:a": NOW - 1000, "commit:a": NOW - 500, "start:b": NOW - 1000, "commit:b": NOW - 1}
    assert not assess(waiting=9, heartbeats=beats, now=NOW, max_idle=300, fetch_interval=5, node="a").healthy
    assert assess(waiting=9, heartbeats=beats, now=NOW, max_idle=300, fetch_interval=5, node="b").healthy


def test_a_worker_that_never_started_is_unhealthy() -> None:
    assert not assess(waiting=0, heartbeats={}, now=NOW, max_idle=300, fetch_interval=5, node="x").healthy
