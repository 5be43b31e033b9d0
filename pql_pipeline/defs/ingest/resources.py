"""Resources of the ingest stage."""

from __future__ import annotations

import dagster as dg
from pydantic import Field


class EventSource(dg.ConfigurableResource):
    """Where the Segment-format event files are: the demo generator's folder or your own export."""

    root: str = Field(description="Directory holding the event files.")
    pattern: str = Field("dt={date}/*.jsonl*", description="Glob of one partition's files; {date} = YYYY-MM-DD.")
    format: str = Field("jsonl", description="jsonl (newline-delimited JSON, optionally .gz) or parquet.")
