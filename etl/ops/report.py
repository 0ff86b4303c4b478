"""`etl report`: the analysts' tables, as text (pure formatting; the data comes from
etl.store.reports). Every stored text is shown through ``printable``."""

import re
from collections.abc import Sequence
from typing import Any

from etl.errors import ConfigError

TITLES = {
    "shared_devices": ("Devices shared by several users", ["device token", "users", "logins", "first", "last"]),
    "shared_ips": ("IPs shared by several users", ["ip token", "users", "logins", "first", "last"]),
    "per_day": ("Logins per day (UTC day sent)", ["day", "logins", "users"]),
    "versions": ("Logins per app version (newest first)", ["app_version", "logins"]),
    "locales": ("Top locales", ["locale", "logins", "users"]),
}


# C0 and C1 controls (ESC, BEL, CSI ...) and the bidirectional overrides that reorder what a
# terminal shows: a stored field (a locale is whatever a sender wrote) must not drive the screen.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(value: Any) -> str:
    """``value`` as text a terminal shows as it is: controls come out as \\uXXXX escapes."""
    return _UNPRINTABLE.sub(lambda m: f"\\u{ord(m[0]):04x}", str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    # tokens in full (67 characters): a row of the report is pasted into `etl reveal --token`
    cells = [[printable(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def render(data: dict[str, list[tuple[Any, ...]]]) -> str:
    parts = []
    for key, (title, headers) in TITLES.items():
        rows = data.get(key, [])
        parts.append(f"{title}\n" + (table(headers, rows) if rows else "  (none)"))
    return "\n\n".join(parts)


def chart(per_day: list[tuple[Any, ...]], path: str) -> None:
    """A PNG bar chart of logins per day (needs matplotlib, an optional dependency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--png needs matplotlib: pip install matplotlib==3.10.7") from None
    days = sorted(per_day)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar([str(d[0]) for d in days], [d[1] for d in days])
    ax.set_title("Logins per day (UTC day sent)")
    ax.set_ylabel("logins")
    ax.tick_params(axis="x", labelrotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
