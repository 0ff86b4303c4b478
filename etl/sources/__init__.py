"""Where messages come from: SQS (sources.sqs) and Kinesis (sources.kinesis)."""
