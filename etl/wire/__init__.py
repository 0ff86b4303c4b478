"""The lean AWS wire: JSON-protocol calls sent by ourselves over keep-alive HTTP/1.1 and SigV4,
with botocore's credentials, errors and retry rules (lean). Both sources' hot calls go through it:
SQS's receive, delete and visibility batches, and Kinesis' GetRecords."""
