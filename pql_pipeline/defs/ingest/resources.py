"""Resources of the ingest stage."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from pql_pipeline.defs.ingest.loader import SourceFile, partition_files


class EventSource(dg.ConfigurableResource):
    """Where the Segment-format event files are: the demo generator's folder or your own export."""

    root: str = Field(description="Directory holding the event files.")
    pattern: str = Field("dt={date}/*.jsonl*", description="Glob of one partition's files; {date} = YYYY-MM-DD.")
    format: str = Field("jsonl", description="jsonl (also .json / .jsonl.gz) or parquet.")

    def files(self, partition: str) -> list[SourceFile]:
        return partition_files(Path(self.root), self.pattern, partition)
