"""Is the pipeline making progress? (pure: judges numbers it is given)

Workers record heartbeats in Redis: ``start:<node>`` when ready, ``fetch:<node>`` after each
fetch run, ``commit:<node>`` after each committed chunk. A pipeline is unhealthy when messages
wait but nothing has been committed for ``max_idle`` seconds, or when no fetch has run for a
while (beat is down). A single worker (``node``) is unhealthy when messages wait and it has done
nothing for ``max_idle`` seconds since it started: a stuck process that a restart would cure.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reasons: list[str] = field(default_factory=list)
    facts: dict[str, float | int | str | None] = field(default_factory=dict)


def _latest(heartbeats: dict[str, float], what: str, node: str | None = None) -> float | None:
    times = [
        t for key, t in heartbeats.items() if key.startswith(f"{what}:") and (node is None or key == f"{what}:{node}")
    ]
    return max(times, default=None)


def _age(now: float, t: float | None) -> float | None:
    return None if t is None else round(now - t, 1)


def assess(
    *,
    waiting: int,
    heartbeats: dict[str, float],
    now: float,
    max_idle: float,
    fetch_interval: float,
    node: str | None = None,
    waiting_what: str = "messages",
) -> Verdict:
    """Judge progress from the backlog (``waiting`` messages, or shards behind) and the heartbeats."""
    reasons = []
    if node is None:
        last_commit = _latest(heartbeats, "commit")
        last_fetch = _latest(heartbeats, "fetch")
        fetch_limit = max(3 * fetch_interval, 60)
        if last_fetch is None or now - last_fetch > fetch_limit:
            reasons.append(f"no fetch has run for over {fetch_limit:.0f}s: is `celery -A etl.worker beat` running?")
        if waiting and (last_commit is None or now - last_commit > max_idle):
            reasons.append(
                f"{waiting} {waiting_what} wait but nothing was committed for over {max_idle:.0f}s: "
                "check the workers' logs"
            )
        facts: dict[str, float | int | str | None] = {
            "waiting": waiting,
            "last_commit_age_s": _age(now, last_commit),
            "last_fetch_age_s": _age(now, last_fetch),
        }
    else:
        started = _latest(heartbeats, "start", node)
        active = max(
            (
                t
                for t in (_latest(heartbeats, "commit", node), _latest(heartbeats, "fetch", node), started)
                if t is not None
            ),
            default=None,
        )
        if started is None:
            reasons.append(f"worker {node} has never reported ready")
        elif waiting and active is not None and now - active > max_idle:
            reasons.append(
                f"worker {node} did nothing for over {max_idle:.0f}s while {waiting} {waiting_what} wait: restart it"
            )
        facts = {"node": node, "waiting": waiting, "last_activity_age_s": _age(now, active)}
    return Verdict(healthy=not reasons, reasons=reasons, facts=facts)
