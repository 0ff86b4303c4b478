"""The Kinesis source: the stream reader (the only Kinesis client) and the fetch loop."""
