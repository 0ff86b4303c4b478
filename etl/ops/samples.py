"""Message bodies to seed a queue with: read from a file, or generated (no SQS here).

Files: a JSON array of events, JSON-lines (one body per line, sent verbatim, so malformed lines
stay malformed), or either of those gzip-compressed (.gz).
Generated: realistic login events, deterministic per seed, with some repeated IPs and devices
(so duplicates can be found) and a few malformed bodies mixed in (so rejection can be seen).
"""

import gzip
import json
import random
import uuid
from pathlib import Path

LOCALES = ["US", "GB", "DE", "FR", "RU", "CN", "ID", "PH", "BR", "IN", "PT", "ES", None, None]
MALFORMED = [
    '{"foo": "oops_wrong_msg_type", "bar": "123"}',
    "not json at all",
    "[1, 2, 3]",
    '{"user_id": "", "device_type": "ios", "ip": "10.0.0.1", "device_id": "000-00-0000", "app_version": "1.0"}',
    '{"user_id": "u", "device_type": "ios", "ip": "10.0.0.1", "device_id": "000-00-0000", "app_version": "1.2.3.4"}',
    '{"user_id": "u", "device_type": 7, "ip": "10.0.0.1", "device_id": "000-00-0000", "app_version": "1.0"}',
]


def read_bodies(path: Path) -> list[str]:
    """Bodies from a JSON array, JSON-lines or .gz file of either. ValueError if unreadable."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    text = raw.decode("utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"{path}: looks like a JSON array but does not parse: {exc.msg} at line {exc.lineno}"
            ) from None
        return [item if isinstance(item, str) else json.dumps(item) for item in items]
    return [line for line in text.splitlines() if line.strip()]


def generate(count: int, seed: int = 0, duplicate_rate: float = 0.1, malformed_rate: float = 0.02) -> list[str]:
    """``count`` bodies, the same for the same seed."""
    rng = random.Random(seed)
    ips: list[str] = []
    devices: list[str] = []
    bodies = []
    for _ in range(count):
        if rng.random() < malformed_rate:
            bodies.append(rng.choice(MALFORMED))
            continue
        ip = (
            rng.choice(ips)
            if ips and rng.random() < duplicate_rate
            else ".".join(str(rng.randint(1, 254)) for _ in range(4))
        )
        device = (
            rng.choice(devices)
            if devices and rng.random() < duplicate_rate
            else f"{rng.randint(0, 999):03d}-{rng.randint(0, 99):02d}-{rng.randint(0, 9999):04d}"
        )
        ips.append(ip)
        devices.append(device)
        version = ".".join(str(rng.randint(0, 9)) for _ in range(rng.choice([2, 3])))
        event = {
            "user_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "app_version": version,
            "device_type": rng.choice(["android", "ios"]),
            "ip": ip,
            "locale": rng.choice(LOCALES),
            "device_id": device,
        }
        bodies.append(json.dumps(event))
    return bodies
