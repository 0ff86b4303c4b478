"""Migration 11: Kinesis stream incarnations (a stream deleted and re-created under its name)."""

# Append-only: a migration, once released, is never edited; add a new one instead.
INCARNATIONS: list[tuple[int, str, str]] = [
    (
        11,
        "stream incarnations: checkpoints and message ids bound to the stream's creation time",
        """
        CREATE TABLE IF NOT EXISTS public.stream_incarnations(
            stream varchar(128) NOT NULL,
            created_at timestamptz NOT NULL,
            ordinal integer NOT NULL CHECK (ordinal >= 1),
            arn text,
            first_seen timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (stream, created_at),
            UNIQUE (stream, ordinal));
        COMMENT ON TABLE public.stream_incarnations IS
            'each Kinesis stream (by name) the pipeline read, by StreamCreationTimestamp; ordinal 1 keeps the '
            'plain name as its key, a later one <name>~<ordinal> (checkpoints, ranges, message ids)';
        """,
    ),
]
