import json
from pathlib import Path

import pytest

from etl.model import events
from etl.ops import samples

FIXTURES = Path(__file__).parents[1] / "fixtures"
CASES = [json.loads(line) for line in (FIXTURES / "edge_cases.jsonl").read_text().splitlines()]

VALID = {
    "user_id": "424cdd21-063a-43a7-b91b-7ca1a833afae",
    "app_version": "2.3.0",
    "device_type": "android",
    "ip": "199.172.111.135",
    "locale": "RU",
    "device_id": "593-47-5928",
}


@pytest.mark.parametrize("case", CASES, ids=[f"{i}-{c['expect']}" for i, c in enumerate(CASES)])
def test_edge_cases_get_the_expected_outcome(case: dict[str, str]) -> None:
    result = events.parse_event(case["body"])
    if case["expect"] == "ok":
        assert isinstance(result, events.LoginEvent)
    else:
        assert isinstance(result, events.Rejection)
        assert result.reason == case["expect"]


def test_every_reason_is_covered_by_a_fixture() -> None:
    assert {c["expect"] for c in CASES} - {"ok"} == set(events.PARSE_REASONS)


def test_valid_event_keeps_its_fields() -> None:
    event = events.parse_event(json.dumps(VALID))
    assert event == events.LoginEvent(**VALID)


def test_locale_may_be_null_or_absent() -> None:
    assert events.parse_event(json.dumps({**VALID, "locale": None})).locale is None  # type: ignore[union-attr]
    body = {k: v for k, v in VALID.items() if k != "locale"}
    assert events.parse_event(json.dumps(body)).locale is None  # type: ignore[union-attr]


def test_deeply_nested_body_is_rejected_not_raised() -> None:
    result = events.parse_event("[" * 100_000 + "]" * 100_000)
    assert isinstance(result, events.Rejection) and result.reason == events.INVALID_JSON


def test_huge_integer_is_rejected_not_raised() -> None:
    result = events.parse_event('{"user_id": ' + "9" * 10_000 + "}")
    assert isinstance(result, events.Rejection) and result.reason == events.INVALID_JSON


def test_details_never_repeat_values() -> None:
    secret_ip = "203.0.113.77"
    bodies = [
        json.dumps({**VALID, "ip": secret_ip, "app_version": "bad-" + secret_ip}),
        json.dumps({**VALID, "ip": secret_ip, "device_type": "x" * 40}),
        '{"' + secret_ip + '": 1, "' + secret_ip + '": 2}',
        "not json " + secret_ip,
    ]
    for body in bodies:
        result = events.parse_event(body)
        assert isinstance(result, events.Rejection)
        assert secret_ip not in result.detail


def test_event_repr_hides_pii() -> None:
    event = events.parse_event(json.dumps(VALID))
    assert VALID["ip"] not in repr(event) and VALID["device_id"] not in repr(event)


def test_shared_samples_give_99_events_and_1_rejection(shared_samples: Path) -> None:
    results = [events.parse_event(b) for b in samples.read_bodies(shared_samples)]
    rejections = [r for r in results if isinstance(r, events.Rejection)]
    assert len(results) == 100
    assert [r.reason for r in rejections] == [events.MISSING_FIELD]


EVENT_FOR_ERASURE = json.dumps(
    {"user_id": "henry", "app_version": "1.0", "device_type": "ios", "ip": "192.0.2.102", "locale": "RU",
     "device_id": "DEVHENRY2"}
)  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        EVENT_FOR_ERASURE + "\n" + EVENT_FOR_ERASURE,  # two events in one message (newline-delimited)
        EVENT_FOR_ERASURE + " trailing bytes",
        EVENT_FOR_ERASURE[:-1] + ', "n": ' + "1" * 5000 + "}",  # over Python's digit limit: parsing stops part-way
    ],
)
def test_a_rejected_body_that_names_a_user_is_kept_under_that_user_for_erasure(body: str) -> None:
    rejected = events.parse_event(body)
    assert isinstance(rejected, events.Rejection) and rejected.reason == events.INVALID_JSON
    assert rejected.user_id == "henry"


@pytest.mark.parametrize("user_id", ["ann", "a\u200db", "tab\there", "\x1b[31mred", "\ue000private", "x" * 128])
def test_an_officer_can_name_every_user_id_ingest_accepts(user_id: str) -> None:
    from etl.pii.service import check_user_id

    body = json.dumps({"user_id": user_id, "device_type": "ios", "ip": "1.2.3.4", "device_id": "d", "app_version": "1"})
    assert isinstance(events.parse_event(body), events.LoginEvent)
    check_user_id(user_id)  # erase / reveal --user-id take it


@pytest.mark.parametrize("user_id", ["", "   ", "a\x00b", "x" * 129, "\ud800"])
def test_an_id_ingest_refuses_is_refused_before_any_sql(user_id: str) -> None:
    from etl.errors import ConfigError
    from etl.pii.service import check_user_id

    with pytest.raises(ConfigError, match="a user id is 1 to 128 characters"):
        check_user_id(user_id)
