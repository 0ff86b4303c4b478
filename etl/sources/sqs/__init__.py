"""The SQS source: the queue, the lean keep-alive client (HTTP/1.1, SigV4) and the fetch loop."""
