"""Picture records from parquet shards, such as the published SocialCounterfactuals ones (`Intel/SocialCounterfactuals`,
`data/train-000NN-of-00061-*.parquet`), read as they are downloaded: no conversion to a folder first.

SocialCounterfactuals rows hold the picture in an `image` column (the `datasets` Image struct `{bytes, path}`), a
`caption` ("A picture of a White male plumber") and two typed attributes: `a1_type`/`a1` ("race"/"White",
"physical"/"obese") and `a2_type`/`a2` ("gender"/"male"). The occupation is the caption's text after the last attribute
value; the gender and race are the values of the attributes typed "gender" and "race". Rows with no gender attribute
(the race x physical subset) cannot make gender pairs and are passed over (counted in the log), not errors.
`ParquetColumns` names other columns for other shards (e.g. `occupation="profession"`, `gender="sex"`).
"""

from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from PIL import Image

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParquetColumns:
    """Which parquet column holds each field of a person; the defaults are SocialCounterfactuals' layout."""

    image: str = field(default="image", metadata={"help": "The picture: an Image struct {bytes, path} or binary."})
    caption: str = field(default="caption", metadata={
        "help": "A caption whose text after the last attribute value is the occupation (when `occupation` is empty)."})
    occupation: str = field(default="", metadata={"help": "A column naming the occupation ('' : from `caption`)."})
    gender: str = field(default="", metadata={"help": "A column with the gender ('' : the attribute typed 'gender')."})
    race: str = field(default="", metadata={"help": "A column with the race ('' : the attribute typed 'race')."})
    attributes: tuple[tuple[str, str], ...] = field(default=(("a1_type", "a1"), ("a2_type", "a2")), metadata={
        "help": "(type column, value column) pairs, e.g. ('a2_type', 'a2') holding ('gender', 'male')."})

    def __post_init__(self) -> None:  # YAML / JSON give lists of lists
        object.__setattr__(self, "attributes", tuple(tuple(pair) for pair in self.attributes))
        if any(len(pair) != 2 for pair in self.attributes):
            raise ValueError(f"attributes must be (type column, value column) pairs, got {self.attributes!r}")

    @classmethod
    def of(cls, columns: ParquetColumns | Mapping[str, Any] | None) -> ParquetColumns:
        """`columns` as a ParquetColumns: None gives the defaults, a mapping overrides some of them."""
        if columns is None or isinstance(columns, ParquetColumns):
            return columns or cls()
        unknown = set(columns) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown parquet column field(s) {sorted(unknown)}; "
                             f"choose from {', '.join(f.name for f in fields(cls))}")
        return cls(**columns)

    def needed(self) -> list[str]:
        """The columns a shard must have."""
        names = [self.image, self.occupation or self.caption, self.gender, self.race]
        if not (self.gender and self.race):
            names += [name for pair in self.attributes for name in pair]
        return list(dict.fromkeys(name for name in names if name))


def parquet_shards(path: Path) -> list[Path]:
    """`path` itself if it is a .parquet file, else the folder's *.parquet files (also under `data/`), sorted."""
    if path.is_file():
        return [path] if path.suffix == ".parquet" else []
    return sorted(path.glob("*.parquet")) or sorted(path.glob("data/*.parquet"))


def parquet_records(shards: Sequence[Path], columns: ParquetColumns, batch_size: int = 256
                    ) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, record) per usable row: record has `image` (bytes), `occupation`, `gender`, `race`, `file` (source
    name), or `__error__`; `where` is "<shard> row N" (N counted from 0, as `datasets` and pandas index rows)."""
    import pyarrow.parquet as pq

    passed_over = 0
    for shard in shards:
        reader = pq.ParquetFile(shard)
        missing = [name for name in columns.needed() if name not in reader.schema_arrow.names]
        if missing:
            raise ValueError(f"{shard}: no column(s) {', '.join(missing)} (it has "
                             f"{', '.join(reader.schema_arrow.names)}); name the right ones with parquet_columns=")
        number = 0
        for batch in reader.iter_batches(batch_size=batch_size, columns=columns.needed()):
            for row in batch.to_pylist():
                where = f"{shard.name} row {number}"
                number += 1
                record = _record(row, columns, shard, where)
                if record is None:
                    passed_over += 1
                else:
                    yield where, record
    if passed_over:
        logger.info("parquet shards: passed over %d row(s) with no gender attribute", passed_over)


def _record(row: dict[str, Any], columns: ParquetColumns, shard: Path, where: str) -> dict[str, Any] | None:
    """One row as a person record; None when it has no gender attribute to pair on."""
    typed = {} if columns.gender and columns.race else {
        str(row[kind] or "").strip().lower(): str(row[value] or "").strip() for kind, value in columns.attributes}
    gender = str(row[columns.gender] or "").strip() if columns.gender else typed.get("gender")
    if gender is None:
        return None
    race = str(row[columns.race] or "").strip() if columns.race else typed.get("race", "")
    values = [value for value in (*typed.values(), gender, race) if value]
    try:
        return {"image": _image_bytes(row[columns.image], shard), "gender": gender, "race": race,
                "occupation": str(row[columns.occupation] or "") if columns.occupation else
                _caption_occupation(str(row[columns.caption] or ""), values), "file": where}
    except ValueError as error:
        return {"__error__": str(error)}


def _caption_occupation(caption: str, values: list[str]) -> str:
    """"A picture of a White male plumber" with attribute values [White, male] -> "plumber"."""
    ends = [match.end() for value in values
            for match in re.finditer(rf"\b{re.escape(value)}\s", caption, flags=re.IGNORECASE)]
    if not ends:
        raise ValueError(f"caption {caption!r} holds none of the attribute values {values}, so no occupation follows")
    return caption[max(ends):].strip().rstrip(".")


def _image_bytes(image: Any, shard: Path) -> bytes:
    """The encoded picture from an Image struct ({bytes, path}: bytes, else a file relative to the shard) or binary;
    its header is read here, so a broken picture is reported with its row rather than at first use."""
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
        if not data and path:
            file = shard.parent / path
            if not file.is_file():
                raise ValueError(f"image has no bytes and its path {path!r} is not a file next to the shard")
            data = file.read_bytes()
    else:
        data = image
    if not isinstance(data, bytes) or not data:
        raise ValueError("image is empty")
    try:
        Image.open(io.BytesIO(data))
    except OSError as error:
        raise ValueError(f"image cannot be decoded ({error})") from error
    return data
