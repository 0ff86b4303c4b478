"""app_version: text <-> integer, order-preserving and collision-free (pure).

Contract (also in docs/reliability.md "app_version contract"):

    "MAJOR[.MINOR[.PATCH]]"  ->  MAJOR * 1_000_000 + MINOR * 1_000 + PATCH

* each component is 1-4 decimal digits; MINOR and PATCH are 0..999, MAJOR is 0..2146 (the
  result must fit Postgres' signed 32-bit integer);
* missing components count as 0, and components compare as numbers, as every version scheme
  (semver, PEP 440) compares them: "2" == "2.0" == "2.0.0" and "6.02" == "6.2" are the same
  version and get the same code; any two *different* versions get different codes;
* the order of codes is the order of versions: "1.9" < "1.10" < "2.3.0" < "23.0";
* ``decode`` gives the canonical text "MAJOR.MINOR.PATCH" back (SQL: etl_app_version_text).

Anything else ("1.2.3.4", "v2", "1.2-beta", "", " 1.0") is rejected, never guessed at.
"""

import functools
import re

MAX_MAJOR = 2146
MAX_COMPONENT = 999
_PATTERN = re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,4}){0,2}")


def encode(text: str) -> int:
    """Return the integer code of a version string; ValueError if it is not one we accept."""
    if not _PATTERN.fullmatch(text):
        raise ValueError("app_version must look like MAJOR[.MINOR[.PATCH]] with digits only")
    parts = [int(p) for p in text.split(".")] + [0, 0]
    major, minor, patch = parts[0], parts[1], parts[2]
    if major > MAX_MAJOR or minor > MAX_COMPONENT or patch > MAX_COMPONENT:
        raise ValueError(
            f"app_version components out of range (major <= {MAX_MAJOR}, minor and patch <= {MAX_COMPONENT})"
        )
    return major * 1_000_000 + minor * 1_000 + patch


@functools.lru_cache(maxsize=4096)
def code_or_none(text: str) -> int | None:
    """``encode(text)``, or None where encode refuses it; remembered, as a fleet sends few versions."""
    try:
        return encode(text)
    except ValueError:
        return None


def decode(code: int) -> str:
    """Return the canonical "MAJOR.MINOR.PATCH" text of a code made by ``encode``."""
    if not 0 <= code <= MAX_MAJOR * 1_000_000 + MAX_COMPONENT * 1_000 + MAX_COMPONENT:
        raise ValueError("not an app_version code")
    major, rest = divmod(code, 1_000_000)
    minor, patch = divmod(rest, 1_000)
    return f"{major}.{minor}.{patch}"
