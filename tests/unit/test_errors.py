"""The error classification tables (docs/reliability.md "Errors"; "Postgres down / SQS down").

Driver errors are built from the drivers' own classes: psycopg2's SQLSTATE classes (with the
code the server would send) and botocore's ClientError with a response as SQS returns it. The
same Postgres cases are provoked on a real server in tests/integration/test_promises.py.
"""

import psycopg2
import psycopg2.errors
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError

from etl.aws import translated
from etl.errors import ConfigError, Forbidden, TerminalError, TransientError
from etl.store.connection import translate


def pg_error(sqlstate: str) -> psycopg2.Error:
    """An instance of psycopg2's class for ``sqlstate``, carrying that code as a server error would."""
    base = psycopg2.errors.lookup(sqlstate)
    cls = type(base.__name__, (base,), {"pgcode": sqlstate})
    return cls("the server's message, which may quote a value: 198.51.100.7")  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("sqlstate", "kind"),
    [
        ("23514", TerminalError),  # check violation: the data is wrong
        ("23505", TerminalError),  # unique violation outside ON CONFLICT
        ("22001", TerminalError),  # string too long
        ("42501", Forbidden),  # insufficient privilege
        ("42P01", ConfigError),  # undefined table: run etl init
        ("42703", ConfigError),  # undefined column
        ("42883", ConfigError),  # undefined function
        ("57014", TransientError),  # statement timeout / query cancelled
        ("55P03", TransientError),  # lock not available
        ("40001", TransientError),  # serialization failure
        ("40P01", TransientError),  # deadlock
        ("53300", TransientError),  # too many connections
        ("57P01", TransientError),  # admin shutdown
        ("08006", TransientError),  # connection failure
    ],
)
def test_postgres_errors_are_classified_by_sqlstate(sqlstate: str, kind: type[Exception]) -> None:
    translated = translate(pg_error(sqlstate), "write chunk")
    assert type(translated) is kind
    assert sqlstate in str(translated) and "198.51.100.7" not in str(translated)


def test_forbidden_is_terminal_and_terminal_is_not_transient() -> None:
    assert isinstance(translate(pg_error("42501"), "x"), TerminalError)
    assert not isinstance(translate(pg_error("23514"), "x"), TransientError)


def test_a_broken_connection_without_sqlstate_is_transient() -> None:
    for exc in (psycopg2.OperationalError("could not connect to server"), psycopg2.InterfaceError("closed")):
        translated = translate(exc, "connect")
        assert type(translated) is TransientError and "no SQLSTATE" in str(translated)


def client_error(code: str, status: int = 400) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "details"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "ReceiveMessage",
    )


def raised(exc: BaseException) -> BaseException:
    with pytest.raises(Exception) as info, translated("SQS", "ReceiveMessage"):
        raise exc
    return info.value


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (client_error("AWS.SimpleQueueService.NonExistentQueue"), ConfigError),
        (client_error("QueueDoesNotExist"), ConfigError),
        (client_error("AccessDenied", 403), ConfigError),
        (client_error("InvalidParameterValue"), ConfigError),
        (client_error("ThrottlingException"), TransientError),
        (client_error("RequestThrottled"), TransientError),
        (client_error("InternalError", 500), TransientError),
        (client_error("ServiceUnavailable", 503), TransientError),
        (NoCredentialsError(), ConfigError),
        (NoRegionError(), ConfigError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), TransientError),
    ],
)
def test_sqs_errors_are_classified(error: BaseException, kind: type[Exception]) -> None:
    translated = raised(error)
    assert type(translated) is kind
    assert "ReceiveMessage" in str(translated)


def test_missing_queue_says_how_to_fix_it() -> None:
    assert "etl init --create-queue" in str(raised(client_error("AWS.SimpleQueueService.NonExistentQueue")))


def test_other_exceptions_pass_through_untouched() -> None:
    assert type(raised(KeyError("x"))) is KeyError


@pytest.mark.parametrize("url", ["user:s3cret@host:6379", "redis//:s3cret@host:6379/0", "mysql://u:s3cret@h/0"])
def test_a_broker_url_etl_cannot_read_is_refused_without_its_password(url: str) -> None:
    from etl.worker.coordination import Coordinator

    with pytest.raises(ConfigError) as caught:
        Coordinator(url)
    assert "s3cret" not in str(caught.value) and "redis://host:6379/0" in str(caught.value)


def test_a_lock_timeout_says_what_to_do_next() -> None:
    message = str(translate(pg_error("55P03"), "erase"))
    assert "try again" in message and "pg_stat_activity" in message
