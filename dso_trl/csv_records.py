"""A CSV reader that names the line where each record starts, so an error points at the broken record itself.

`csv.DictReader.line_num` is the line a record *ends* on: a record with an unclosed quote swallows the lines after it,
and an error reported there points past the mistake.
"""

from __future__ import annotations

import csv
from typing import IO, Iterator


class NumberedReader(csv.DictReader):
    """`csv.DictReader` whose `where` names the record just read: `"line N"`, or `"lines N-M (...)"` when a quoted
    field spans lines. A `csv.Error` becomes a ValueError naming its line."""

    def __init__(self, handle: IO[str], **options):
        self._count = 0
        self._first: int | None = None  # the first non-blank line read for the current record
        self.where = ""
        super().__init__(self._lines(handle), **options)

    def _lines(self, handle: IO[str]) -> Iterator[str]:
        for line in handle:
            self._count += 1
            if self._first is None and line.strip():
                self._first = self._count
            yield line

    def __next__(self) -> dict:
        try:
            self.fieldnames  # the header is read first, and is not a record
            self._first = None
            record = super().__next__()
        except csv.Error as error:
            raise ValueError(f"line {self.line_num}: {error}") from error
        start, end = self._first or self.line_num, self.line_num
        self.where = (f"line {end}" if start == end else
                      f"lines {start}-{end} (a quoted field spans them: is a quote unclosed?)")
        return record
