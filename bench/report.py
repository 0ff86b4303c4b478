"""`make bench`'s verdicts, tables and plot, from the results of one run (bench/run.py)."""

from pathlib import Path
from statistics import mean
from typing import Any

from bench.profile import ORDER

Verdict = tuple[str, str, str, bool | None]


def _run(res: dict[str, Any], step: str, client: str, processes: int) -> dict[str, Any] | None:
    return next((c for c in res.get(step) or [] if c["client"] == client and c["processes"] == processes), None)


def _bare_cpu(res: dict[str, Any]) -> float | None:
    """CPU µs per message of the bare stock-boto3 loop: the mean of its runs before and after."""
    runs = [res[k]["cpu_us_per_message"] for k in ("bare_before", "bare_after") if res.get(k)]
    return sum(runs) / len(runs) if runs else None


def plot(capacity: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for client, label in (("lean", "lean SQS client (default)"), ("boto3", "stock boto3 client")):
        runs = [c for c in capacity if c["client"] == client]
        xs = [c["processes"] for c in runs]
        ax.plot(xs, [c["msg_per_s"] for c in runs], marker="o", label=label)
    ax.axhline(5000, color="grey", linestyle="--", label="target 5,000 msg/s")
    ax.set_xlabel("worker processes (celery --concurrency)")
    ax.set_ylabel("messages per second")
    ax.set_xticks(sorted({c["processes"] for c in capacity}))
    ax.set_ylim(bottom=0)
    ax.set_title("etl through the HTTP SQS stand-in (15 ms/call), 2 cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def _cpu_verdicts(res: dict[str, Any]) -> list[Verdict]:
    out: list[Verdict] = []
    bare = _bare_cpu(res)
    before, after = _run(res, "capacity", "boto3", 2), _run(res, "capacity", "lean", 2)
    if bare and before and after:
        b, a = before["cpu_us_per_message"] / bare, after["cpu_us_per_message"] / bare
        out.append(
            (
                "CPU/msg pipeline (boto3) / bare loop",
                f"{before['cpu_us_per_message']:.0f} / {bare:.0f} us",
                f"{b:.2f}x (before; report)",
                None,
            )
        )
        out.append(
            (
                "CPU/msg pipeline (lean) / bare loop",
                f"{after['cpu_us_per_message']:.0f} / {bare:.0f} us",
                f"{a:.2f}x (<= 0.45, aim 0.35)",
                a <= 0.45,
            )
        )
        cap = after["msg_per_s"] / max(1, before["msg_per_s"])
        out.append(
            (
                "capacity 2 procs, lean / boto3",
                f"{after['msg_per_s']} / {before['msg_per_s']} msg/s",
                f"{cap:.2f}x (>= 2.5)",
                cap >= 2.5,
            )
        )
        out.append(
            ("capacity, 2 processes (lean)", f"{after['msg_per_s']} msg/s", ">= 5000", after["msg_per_s"] >= 5000)
        )
        out.append(
            (
                "stand-in's own CPU (lean run)",
                f"{after['standin_cpu_us_per_message']:.0f} us/msg",
                "not counted in the pipeline's",
                None,
            )
        )
    if bare and res.get("bare_lean"):
        lean = res["bare_lean"]["cpu_us_per_message"]
        out.append(
            (
                "SQS client CPU/msg, boto3 / lean",
                f"{bare:.0f} / {lean:.0f} us (bare loops)",
                f"{bare / lean:.1f}x (>= 3)",
                bare / lean >= 3,
            )
        )
    return out


def verdicts(res: dict[str, Any]) -> list[Verdict]:
    out: list[Verdict] = []
    ls = res.get("localstack")
    if ls:
        out.append(
            (
                "pipeline / raw drain (LocalStack)",
                f"{ls['pipeline_msg_per_s']} / {ls['raw_drain_msg_per_s']} msg/s",
                f"{ls['ratio']:.2f} (>= 0.8)",
                ls["ratio"] >= 0.8,
            )
        )
    else:
        out.append(("pipeline / raw drain (LocalStack)", "skipped", res.get("localstack_skipped", ""), None))
    out += _cpu_verdicts(res)
    if "vault" in res:
        # runs alternate off, on, on, off (older results: off, on): a drift of the machine's speed
        # during the step weighs on both sides alike
        off, on = (round(mean(r["msg_per_s"] for r in res["vault"] if r["vault"] == v)) for v in (False, True))
        out.append(("vault on / off, 2 processes", f"{on} / {off} msg/s", f"{on / off:.2f} (>= 0.9)", on / off >= 0.9))
    for name, rows in res.get("codec", {}).items():  # issue 20: one encoding layer, UTF-8 bodies
        before, after = rows["before"], rows["after"]
        out.append(
            (
                f"broker bytes / body byte, {name}",
                f"{after[2]:.2f} (was {before[2]:.2f})",
                "<= 1.5" if "emoji" in name else "lower than before",
                after[2] <= 1.5 if "emoji" in name else after[2] < before[2],
            )
        )
        cost, was = after[0] + after[1], before[0] + before[1]
        out.append(
            (
                f"chunk pack+unpack CPU / message, {name}",
                f"{cost:.1f} us (was {was:.1f} us)",
                f"{cost / was:.2f}x (<= 1.0)",
                cost <= was,
            )
        )
    if "write_stage" in res:
        ws = res["write_stage"]
        out.append(
            (
                "write stage / raw COPY+upsert",
                f"{ws['ours_rows_per_s']} / {ws['raw_rows_per_s']} rows/s",
                f"{ws['ratio']:.2f} (>= 0.5)",
                ws["ratio"] >= 0.5,
            )
        )
    if "memory" in res:
        mem = res["memory"]
        out.append(
            (
                "SQS calls per message at load",
                f"{mem['calls_per_message']} (whole {mem['rows_measured'] // 1000}k run)",
                "<= 0.21",
                mem["calls_per_message"] <= 0.21,
            )
        )
        growth = (mem["rss_end_kb"] - mem["rss_start_kb"]) / mem["rss_start_kb"]
        out.append(
            (
                "worker RSS growth over the run",
                f"{mem['rss_start_kb'] // 1024} -> {mem['rss_end_kb'] // 1024} MiB",
                f"{growth:+.1%} (< 10%)",
                growth < 0.10,
            )
        )
    if "idle" in res:
        idle = res["idle"]
        out.append(("ReceiveMessage per minute, idle", f"{idle['per_minute']}", "<= 4", idle["per_minute"] <= 4))
    two = _run(res, "capacity", "lean", 2)
    if "naive" in res and two:
        nv = res["naive"]
        ratio = two["msg_per_s"] / max(1, nv["msg_per_s"])
        out.append(
            (
                "pipeline / naive baseline",
                f"{two['msg_per_s']} / {nv['msg_per_s']} msg/s",
                f"{ratio:.0f}x (>= 20x)",
                ratio >= 20,
            )
        )
    steady_rows = {r["load"]: r for r in res.get("steady") or []}
    for load, r in steady_rows.items():
        ours, bare = r["pipeline"], r["bare"]
        target, ok = {"10%": ("<= 0.35x", r["ratio"] <= 0.35), "saturated": ("<= 0.20x", r["ratio"] <= 0.20)}.get(
            load, ("(reported)", None)
        )
        out.append(
            (
                f"CPU/msg vs bare loop, {load}" + (f" ({r['rate_msg_per_s']}/s)" if r["rate_msg_per_s"] else ""),
                f"{ours['cpu_us_per_message']:.0f} / {bare['cpu_us_per_message']:.0f} µs",
                f"{r['ratio']:.2f}x" + (f" ({target})" if target[0] != "(" else f" {target}"),
                ok,
            )
        )
    flatness = res.get("flatness")
    if flatness:  # the verdict: runs in the order 10%, saturated, saturated, 10% (a drift cancels out)
        flat = flatness["ratio"]
        value = f"{flatness['low_us']:.0f} / {flatness['saturated_us']:.0f} µs"
        out.append(("CPU/msg, pipeline at 10% / saturated", value, f"{flat:.2f}x (<= 1.5x)", flat <= 1.5))
    if "10%" in steady_rows and "saturated" in steady_rows:
        low, sat = steady_rows["10%"]["pipeline"], steady_rows["saturated"]["pipeline"]
        flat = low["cpu_us_per_message"] / max(0.1, sat["cpu_us_per_message"])
        if flatness:  # the steady rows' two runs, minutes apart: reported beside the verdict
            out.append(("  same, the steady rows' runs (apart)", f"{flat:.2f}x", "(reported)", None))
        else:
            out.append(("CPU/msg, pipeline at 10% / saturated", f"{flat:.2f}x", "<= 1.5x", flat <= 1.5))
    for load, r in steady_rows.items():
        ours = r["pipeline"]
        if load == "saturated" or ours["p99_s"] is None:
            continue
        bound = load in ("10%", "50%")
        out.append(
            (
                f"latency p50 / p99, {load}",
                f"{ours['p50_s']} / {ours['p99_s']} s",
                "p99 <= 2 s" if bound else "(reported)",
                ours["p99_s"] <= 2 if bound else None,
            )
        )
    return out


def table(rows: list[Verdict]) -> str:
    lines = [f"{'measure':<38} {'value':<30} {'ratio / target':<32} ok", "-" * 106]
    for name, value, target, ok in rows:
        lines.append(f"{name:<38} {value:<30} {target:<32} {'-' if ok is None else 'yes' if ok else 'NO'}")
    return "\n".join(lines)


def stage_table(res: dict[str, Any]) -> str:
    """CPU µs per message by stage: profile fractions x the CPU per message measured unprofiled."""
    cols = []
    for client in ("boto3", "lean"):
        prof = _run(res, "profile", client, 2)
        cap = _run(res, "capacity", client, 2)
        if prof and cap and prof.get("profile"):
            cols.append((client, prof["profile"], cap["cpu_us_per_message"]))
    if not cols:
        return "(no profile: py-spy missing or no samples)"
    head = f"\n{'stage (worker tree + beat, 2 processes)':<42}" + "".join(
        f"{c + ' µs/msg':>16}{'share':>8}" for c, _, _ in cols
    )
    lines = [head, "-" * len(head)]
    for stage in ORDER:
        cells = "".join(f"{frac[stage] * total:>16.0f}{frac[stage]:>8.0%}" for _, frac, total in cols)
        lines.append(f"{stage:<42}{cells}")
    waits = "".join(f"{'':>16}{frac.get('waiting (left out)', 0):>8.0%}" for _, frac, _ in cols)
    lines.append(f"{'(samples in a wait, left out)':<42}{waits}")
    lines.append(
        f"{'total (measured without the profiler)':<42}" + "".join(f"{total:>16.0f}{'':>8}" for _, _, total in cols)
    )
    return "\n".join(lines)
