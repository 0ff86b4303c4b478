"""`etl report`: the analysts' tables, as text (pure formatting; the data comes from
etl.store.reports). Every stored text is shown through ``printable``."""

import unicodedata
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


# What a terminal would not show as itself: controls (ESC, BEL, CSI ...), format characters
# (bidirectional overrides that reorder the screen; zero-width joiners and spaces, U+FEFF, tag
# characters, the soft hyphen, that make two ids look alike), line and paragraph separators,
# surrogates, private-use and unassigned code points, and the Hangul fillers that draw as blanks.
# A stored field (a user id or locale is whatever a sender wrote) must neither drive the screen
# nor pass for another value.
_HIDDEN = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"))
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0")


def _shown(c: str) -> str:
    if unicodedata.category(c) in _HIDDEN or c in _BLANK_LETTERS:
        return f"\\u{ord(c):04x}" if ord(c) <= 0xFFFF else f"\\U{ord(c):08x}"
    return c


def printable(value: Any) -> str:
    """``value`` as text a terminal shows as it is: what would not show as itself comes out as a
    \\uXXXX (or \\UXXXXXXXX) escape."""
    text = str(value)
    return text if text.isascii() and text.isprintable() else "".join(map(_shown, text))


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
