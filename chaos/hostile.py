"""Hostile message bodies: at least 30 distinct ways a producer (or an attacker) can go wrong.

Every body is something SQS accepts (only XML-legal characters), so each reaches the pipeline.
Some are hostile but *valid* events (SQL or shell metacharacters in free-text fields): those must
land as rows, stored verbatim and harmless.
"""

import json

GOOD = {"user_id": "u", "device_type": "ios", "ip": "10.20.30.40", "device_id": "123-45-6789", "app_version": "1.0"}


def _with(**fields: object) -> str:
    return json.dumps({**GOOD, **fields})


def bodies() -> list[str]:
    near_limit = 250_000  # SQS allows 256 KiB per message in a batch; stay just under it
    return [
        " ",  # whitespace only (SQS refuses an empty body)
        "\n\t ",
        "{",
        "null",
        "[]",
        '"just a string"',
        "1e999",
        "9" * 5000,  # over Python's integer digit limit
        "[" * 5000 + "]" * 5000,  # deeper than any JSON parser should recurse
        '{"a":' * 3000 + "1" + "}" * 3000,
        _with(user_id="x" * near_limit),  # huge and too long for its column
        _with(padding="x" * near_limit),  # huge but valid: extra fields are ignored
        _with(user_id="nul\\u0000inside").replace("\\\\u0000", "\\u0000"),
        json.dumps({**GOOD, "device_id": "\ud800"}),  # lone surrogate, as a JSON escape
        '{"user_id": "\\x41"}',  # invalid escape
        _with(ip=12345),  # numbers where strings belong
        _with(user_id=True),
        _with(device_id=["a", "b"]),
        _with(app_version=1.2),
        _with(locale={"lang": "ru"}),
        _with(user_id="'; DROP TABLE user_logins; --"),  # valid: stored verbatim, harmless
        _with(device_type="$(reboot) `id` | rm -rf /"[:32]),  # valid: stored verbatim
        _with(app_version="１.２"),  # fullwidth digits that look like 1.2
        _with(device_type="\u0430ndroid"),  # Cyrillic a look-alike: valid, a different value
        _with(user_id=""),
        _with(device_id="   "),
        '{"user_id": "a", "user_id": "b", "device_type": "ios", "ip": "1.1.1.1", "device_id": "d", "app_version": "1"}',
        "{}",
        '{"foo": "oops_wrong_msg_type", "bar": "123"}',
        _with(app_version="1.2.3.4"),
        _with(app_version="-1"),
        _with(app_version="99999"),
        _with(ip="10.20.30.40\n"),  # valid: tokenised as sent
        "\ufeff" + _with(),  # byte-order mark before the JSON
        "NaN",
        _with(user_id="\u202eevil\u202c"),  # right-to-left override: valid
        _with(locale="🇷🇺"),
        "<login><ip>10.20.30.40</ip></login>",
        "// comment\n{}",
        '{"' + "k" * 10_000 + '": 1}',
    ]
