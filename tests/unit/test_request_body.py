"""etl.wire.api.request_body writes json.dumps's compact JSON, its fast path for receipt-handle
batches included, for any values (quotes, backslashes, control characters, non-ASCII, lone
surrogates, wrong types) and any shape."""

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl.wire.api import request_body


def dumps(params: object) -> bytes:
    return json.dumps(params, separators=(",", ":")).encode()


handles = st.one_of(
    st.binary(min_size=1, max_size=300).map(lambda b: base64.b64encode(b).decode()),  # as SQS's look
    st.text(max_size=40),  # anything at all
    st.sampled_from(['a"b', "a\\b", "a\nb", "a\x00b", "a\x7fb", "é", "\ud800", "\u2028", ""]),
)
ids = st.one_of(st.integers(0, 9).map(str), st.text(max_size=5), st.integers())
entry = st.fixed_dictionaries({"Id": ids, "ReceiptHandle": handles})
odd_entry = st.one_of(
    entry,
    st.fixed_dictionaries({"Id": ids, "ReceiptHandle": handles, "VisibilityTimeout": st.integers(0, 43200)}),
    st.fixed_dictionaries({"Id": ids, "Other": handles}),
    st.fixed_dictionaries({"ReceiptHandle": handles, "Id": ids}),  # the other key order
    st.just({}),
)
urls = st.one_of(
    st.just("https://sqs.eu-west-1.amazonaws.com/123456789012/logins"), st.text(max_size=30), st.integers()
)


@settings(max_examples=1500)
@given(urls, st.lists(entry, max_size=10))
def test_a_batch_of_handles_is_json_dumps_byte_for_byte(url: object, entries: list[dict[str, object]]) -> None:
    params = {"QueueUrl": url, "Entries": entries}
    assert request_body(params) == dumps(params)


@settings(max_examples=1500)
@given(urls, st.lists(odd_entry, max_size=10), st.booleans())
def test_any_other_shape_reads_back_as_sent(url: object, entries: list[dict[str, object]], extra: bool) -> None:
    params: dict[str, object] = {"Entries": entries, "QueueUrl": url}
    if extra:
        params["VisibilityTimeout"] = 30
    body = request_body(params)
    assert json.loads(body) == json.loads(dumps(params))
    assert body.isascii()


@pytest.mark.parametrize(
    "handle", ['a"b', "a\\b", "a\nb", "a\x00b", "a\x1fb", "a\x7fb", "é", "\ud800", "\u2028", "", " ~"]
)
@pytest.mark.parametrize("where", ["QueueUrl", "Id", "ReceiptHandle"])
def test_every_character_json_escapes_is_escaped_wherever_it_is(handle: str, where: str) -> None:
    entries = [{"Id": "0", "ReceiptHandle": "AQEB" * 50}, {"Id": "1", "ReceiptHandle": "AQEB"}]
    params: dict[str, object] = {"QueueUrl": "https://q", "Entries": entries}
    if where == "QueueUrl":
        params["QueueUrl"] = handle
    else:
        entries[1][where] = handle
    assert request_body(params) == dumps(params)


def test_requests_that_are_not_batches_are_json_dumps() -> None:
    receive = {"QueueUrl": "q", "MaxNumberOfMessages": 10, "MessageSystemAttributeNames": ["SentTimestamp"]}
    assert request_body(receive) == dumps(receive)
    assert request_body({"Entries": "not a list", "QueueUrl": "q"}) == dumps({"Entries": "not a list", "QueueUrl": "q"})
