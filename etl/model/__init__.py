"""Pure data: login events, flat rows and rejections, app versions, Kinesis shard lineage. No I/O."""
