"""Migration 9: Kinesis checkpoints and committed ranges."""

# Append-only: a migration, once released, is never edited; add a new one instead.
STREAMS: list[tuple[int, str, str]] = [
    (
        9,
        "stream checkpoints: per-shard committed position, moved only over contiguous committed ranges",
        """
        CREATE TABLE IF NOT EXISTS public.stream_checkpoints(
            stream varchar(128) NOT NULL,
            shard_id varchar(128) NOT NULL,
            checkpoint numeric NOT NULL DEFAULT 0 CHECK (checkpoint >= 0),
            start_at timestamptz,
            end_seq numeric,
            first_seen timestamptz NOT NULL DEFAULT now(),
            moved_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (stream, shard_id));
        COMMENT ON TABLE public.stream_checkpoints IS
            'one row per Kinesis shard: every record up to checkpoint is committed (0: none yet)';
        COMMENT ON COLUMN public.stream_checkpoints.start_at IS
            'ETL_KINESIS_START=latest: a shard with no checkpoint is read from this arrival time';
        COMMENT ON COLUMN public.stream_checkpoints.end_seq IS
            'last sequence number of a closed shard, recorded when a fetch read to its end';
        CREATE TABLE IF NOT EXISTS public.stream_ranges(
            stream varchar(128) NOT NULL,
            shard_id varchar(128) NOT NULL,
            after_seq numeric NOT NULL,
            last_seq numeric NOT NULL CHECK (last_seq > after_seq),
            committed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (stream, shard_id, after_seq, last_seq));
        COMMENT ON TABLE public.stream_ranges IS
            'committed chunks (after_seq, last_seq] the checkpoint has not reached yet (written with their rows)';
        """,
    ),
]
