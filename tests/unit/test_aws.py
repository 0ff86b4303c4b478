"""etl.aws's error table: every row, an AWS error in, our kind and message out.

The errors are botocore's own exception objects (a ClientError built with the response dict AWS
would send, connection errors with the endpoint botocore names), never mocks. Each message names
the service, the operation and the error code (or the exception's class and the endpoint), and
never a value: the response's own message may quote one (here an IP address), and is left out.
"""

import pytest
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    ReadTimeoutError,
    SSLError,
)

from etl import aws, awserrors
from etl.errors import ConfigError, EtlError, TerminalError, TransientError
from etl.model.shards import IteratorExpired, Throttled

VALUE = "198.51.100.7"  # what an AWS message may quote; never in ours


def client_error(code: str, operation: str = "ReceiveMessage", status: int = 400) -> ClientError:
    return ClientError(
        {
            "Error": {"Code": code, "Message": f"the request held {VALUE}"},
            "ResponseMetadata": {"HTTPStatusCode": status},  # type: ignore[typeddict-item]
        },
        operation,
    )


CREATE_QUEUE = "check SQS_QUEUE_URL or run `etl init --create-queue`"
CREATE_STREAM = "check KINESIS_STREAM_NAME or run `etl init --create-stream`"
ANCHOR_FORMS = "set ETL_AUDIT_ANCHOR=file:///path or s3://bucket/prefix"

# (service, operation, exception in, our kind out, our message out)
CASES: list[tuple[str, str, BaseException, type[EtlError], str]] = [
    # any service: the environment lacks what AWS needs
    ("SQS", "ReceiveMessage", NoCredentialsError(), ConfigError,
     "SQS ReceiveMessage: NoCredentialsError: set AWS credentials and region"),
    ("Kinesis", "GetRecords", NoCredentialsError(), ConfigError,
     "Kinesis GetRecords: NoCredentialsError: set AWS credentials and region"),
    ("S3", "PutObject", NoRegionError(), ConfigError, "S3 PutObject: NoRegionError: set AWS credentials and region"),
    # S3: parameters botocore refuses came from ETL_AUDIT_ANCHOR
    ("S3", "PutObject", ParamValidationError(report=f"Invalid bucket name {VALUE}"), ConfigError,
     f"S3 PutObject: invalid parameters; {ANCHOR_FORMS}"),
    # SQS
    ("SQS", "ReceiveMessage", client_error("AWS.SimpleQueueService.NonExistentQueue"), ConfigError,
     f"SQS ReceiveMessage: the queue does not exist; {CREATE_QUEUE}"),
    ("SQS", "DeleteMessageBatch", client_error("QueueDoesNotExist"), ConfigError,
     f"SQS DeleteMessageBatch: the queue does not exist; {CREATE_QUEUE}"),
    ("SQS", "ChangeMessageVisibilityBatch", client_error("AccessDenied", status=403), ConfigError,
     "SQS ChangeMessageVisibilityBatch refused: AccessDenied"),
    ("SQS", "SendMessageBatch", client_error("InvalidParameterValue"), ConfigError,
     "SQS SendMessageBatch refused: InvalidParameterValue"),
    ("SQS", "ReceiveMessage", client_error("MissingParameter"), ConfigError,
     "SQS ReceiveMessage refused: MissingParameter"),
    ("SQS", "ReceiveMessage", client_error("InvalidAddress"), ConfigError,
     "SQS ReceiveMessage refused: InvalidAddress"),
    # Kinesis
    ("Kinesis", "GetRecords", client_error("ExpiredIteratorException"), IteratorExpired,
     "Kinesis GetRecords: iterator expired"),
    ("Kinesis", "GetRecords", client_error("ProvisionedThroughputExceededException"), Throttled,
     "Kinesis GetRecords throttled: ProvisionedThroughputExceededException"),
    ("Kinesis", "GetShardIterator", client_error("LimitExceededException"), Throttled,
     "Kinesis GetShardIterator throttled: LimitExceededException"),
    ("Kinesis", "ListShards", client_error("ThrottlingException"), Throttled,
     "Kinesis ListShards throttled: ThrottlingException"),
    ("Kinesis", "ListShards", client_error("ResourceNotFoundException"), ConfigError,
     f"Kinesis ListShards: the stream does not exist; {CREATE_STREAM}"),
    ("Kinesis", "PutRecords", client_error("AccessDeniedException"), ConfigError,
     "Kinesis PutRecords refused: AccessDeniedException"),
    ("Kinesis", "PutRecords", client_error("KMSAccessDeniedException"), ConfigError,
     "Kinesis PutRecords refused: KMSAccessDeniedException"),
    ("Kinesis", "PutRecords", client_error("KMSNotFoundException"), ConfigError,
     "Kinesis PutRecords refused: KMSNotFoundException"),
    ("Kinesis", "GetRecords", client_error("InvalidArgumentException"), TerminalError,
     "Kinesis GetRecords refused: InvalidArgumentException"),
    ("Kinesis", "PutRecords", client_error("ValidationException"), TerminalError,
     "Kinesis PutRecords refused: ValidationException"),
    # S3
    ("S3", "ListObjectVersions", client_error("NoSuchBucket", status=404), ConfigError,
     "S3 ListObjectVersions: the bucket does not exist; check ETL_AUDIT_ANCHOR"),
    ("S3", "PutObject", client_error("PreconditionFailed", status=412), ConfigError,
     "S3 PutObject refused: PreconditionFailed"),
    ("S3", "PutObject", client_error("AccessDenied", status=403), ConfigError, "S3 PutObject refused: AccessDenied"),
    ("S3", "GetObject", client_error("InvalidAccessKeyId", status=403), ConfigError,
     "S3 GetObject refused: InvalidAccessKeyId"),
    ("S3", "PutObject", client_error("SignatureDoesNotMatch", status=403), ConfigError,
     "S3 PutObject refused: SignatureDoesNotMatch"),
    ("S3", "PutObject", client_error("InvalidArgument"), ConfigError, "S3 PutObject refused: InvalidArgument"),
    ("S3", "PutObject", client_error("InvalidRequest"), ConfigError, "S3 PutObject refused: InvalidRequest"),
    ("S3", "PutObject", client_error("InvalidBucketName"), ConfigError, "S3 PutObject refused: InvalidBucketName"),
    ("S3", "PutObject", client_error("AllAccessDisabled", status=403), ConfigError,
     "S3 PutObject refused: AllAccessDisabled"),
    # any other error code may heal: throttling and 5xx after botocore's retries, codes we do not know
    ("SQS", "ReceiveMessage", client_error("ThrottlingException"), TransientError,
     "SQS ReceiveMessage failed: ThrottlingException"),
    ("SQS", "ReceiveMessage", client_error("InternalError", status=500), TransientError,
     "SQS ReceiveMessage failed: InternalError"),
    ("SQS", "ReceiveMessage", client_error("KMS.ThrottlingException"), TransientError,
     "SQS ReceiveMessage failed: KMS.ThrottlingException"),
    ("S3", "PutObject", client_error("SlowDown", status=503), TransientError, "S3 PutObject failed: SlowDown"),
    ("Kinesis", "PutRecords", client_error("InternalFailure", status=500), TransientError,
     "Kinesis PutRecords failed: InternalFailure"),
    # a code belongs to its own service's rows only
    ("SQS", "ReceiveMessage", client_error("ResourceNotFoundException"), TransientError,
     "SQS ReceiveMessage failed: ResourceNotFoundException"),
    ("Kinesis", "ListShards", client_error("AccessDenied", status=403), TransientError,
     "Kinesis ListShards failed: AccessDenied"),
    # connection-level errors: the endpoint (scheme, host, port) is named, nothing more of its URL
    ("SQS", "ReceiveMessage", EndpointConnectionError(endpoint_url="http://127.0.0.1:4566/"), TransientError,
     "SQS ReceiveMessage failed at http://127.0.0.1:4566: cannot connect (EndpointConnectionError); "
     "check AWS_ENDPOINT_URL_SQS and SQS_QUEUE_URL, and that the SQS server answers"),
    ("Kinesis", "GetRecords", ConnectTimeoutError(endpoint_url="https://kinesis.eu-west-1.amazonaws.com/"),
     TransientError, "Kinesis GetRecords failed at https://kinesis.eu-west-1.amazonaws.com: no connection in time "
     "(ConnectTimeoutError); check AWS_ENDPOINT_URL_KINESIS and KINESIS_STREAM_NAME, and that Kinesis answers"),
    ("S3", "GetObject", ReadTimeoutError(endpoint_url=f"https://user:secret@anchors.s3.amazonaws.com/a?ip={VALUE}"),
     TransientError, "S3 GetObject failed at https://anchors.s3.amazonaws.com: no answer in time (ReadTimeoutError); "
     "check AWS_ENDPOINT_URL_S3 and ETL_AUDIT_ANCHOR, and that S3 answers"),
    ("SQS", "DeleteMessageBatch", ConnectionClosedError(endpoint_url="http://[::1]:9324/000000000000/q"),
     TransientError, "SQS DeleteMessageBatch failed at http://[::1]:9324: the connection was closed "
     "(ConnectionClosedError); "
     "check AWS_ENDPOINT_URL_SQS and SQS_QUEUE_URL, and that the SQS server answers"),
    ("SQS", "ReceiveMessage", SSLError(endpoint_url="https://localhost:8443/", error=OSError("bad cert")),
     TransientError, "SQS ReceiveMessage failed at https://localhost:8443: TLS failed (SSLError); "
     "check AWS_ENDPOINT_URL_SQS and SQS_QUEUE_URL, and that the SQS server answers"),
    ("SQS", "SendMessageBatch", ParamValidationError(report=f"MessageBody {VALUE}"), TransientError,
     "SQS SendMessageBatch failed: ParamValidationError"),
]  # fmt: skip


def raised(service: str, operation: str, exc: BaseException) -> BaseException:
    with pytest.raises(Exception) as info, aws.translated(service, operation):
        raise exc
    return info.value


@pytest.mark.parametrize(("service", "operation", "error", "kind", "says"), CASES)
def test_each_aws_error_becomes_our_kind_with_a_value_free_message(
    service: str, operation: str, error: BaseException, kind: type[EtlError], says: str
) -> None:
    translated = raised(service, operation, error)
    assert type(translated) is kind
    assert str(translated) == says
    assert VALUE not in str(translated) and "secret" not in str(translated)
    assert translated.__cause__ is None and translated.__suppress_context__, "the driver's message stays behind"


def test_every_row_of_the_table_is_exercised() -> None:
    used = {awserrors.row_for(service, error) for service, _, error, _, _ in CASES}
    assert used == set(awserrors.TABLE)


def test_the_last_rows_take_every_botocore_error() -> None:
    assert awserrors.TABLE[-2].match is ClientError and awserrors.TABLE[-1].match is BotoCoreError
    assert awserrors.row_for("SQS", client_error("")) is awserrors.TABLE[-2]
    assert str(raised("SQS", "GetQueueAttributes", client_error(""))) == "SQS GetQueueAttributes failed: Unknown"


def test_other_exceptions_pass_through_untouched() -> None:
    assert awserrors.row_for("SQS", KeyError("x")) is None
    assert type(raised("SQS", "ReceiveMessage", KeyError("x"))) is KeyError
    assert type(raised("S3", "PutObject", ConfigError("ours already"))) is ConfigError


def test_an_expected_code_is_an_answer_not_a_failure() -> None:
    with aws.translated("Kinesis", "CreateStream", expected={"ResourceInUseException"}) as refusal:
        raise client_error("ResourceInUseException", "CreateStream")
    assert refusal.code == "ResourceInUseException"

    with aws.translated("Kinesis", "CreateStream", expected={"ResourceInUseException"}) as refusal:
        pass
    assert refusal.code is None

    expecting = aws.translated("Kinesis", "CreateStream", expected={"ResourceInUseException"})
    with pytest.raises(Throttled), expecting:  # any other code is still translated
        raise client_error("LimitExceededException", "CreateStream")
