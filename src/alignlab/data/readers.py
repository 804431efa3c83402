"""Where preference records come from (SPEC §2): local files or Hugging Face datasets, read record by
record with each record's position, for `alignlab.data.pairs` to turn into pairs.

A source is a local file — `.jsonl`, `.json`, `.csv` (each optionally `.gz`) or `.parquet` —, a local
directory written by `datasets`' `save_to_disk` (a `Dataset`, read whole, or a `DatasetDict`, whose
`split` is read), or, when it is neither and is a name the hub can hold (`name` or `org/name`), a
Hugging Face dataset loaded with `datasets.load_dataset(name, name=dataset_config, data_dir=data_dir,
revision=revision, split=split)`. A split that a DatasetDict or hub dataset lacks is an error listing
the splits it has. Unless datasets is offline (HF_DATASETS_OFFLINE=1: it reads its cache), the hub is
asked first, with a few seconds' timeout, whether it answers at all: if it does not, a dataset that is
not in the datasets cache is an error at once, rather than after datasets' retries (about 25 s each).

Conventions:
- Positions: text files (.jsonl, .csv) count 1-based lines, as an editor does; a .json list counts
  0-based "record N" and Parquet files and hub datasets 0-based "row N", as `data[N]` / `ds[N]` do.
- Generated ids are "<stem>-<position>", where stem is the file name without its extensions
  (`test.jsonl.gz` -> `test`), for a saved dataset directory its name (and "-<split>" for a
  DatasetDict) or, for a hub dataset `org/name`, "name-<split>" with the configuration and data_dir
  between them when given ("hh-rlhf-harmless-base-train").
- `.json` files hold a list of records, or an object whose "data" key holds that list.
- CSV cells are text; the numeric and boolean columns (rewards, PKU labels, and the columns the caller
  names in `numeric_columns`) are parsed from it.
- A .jsonl or .csv line longer than `MAX_LINE_BYTES` (16 MiB) is an error at that line, found
  without reading the line whole (so a 50 MB line costs 16 MiB of memory, not 50 MB plus its parse):
  one preference pair is kilobytes; such a line is a mis-named .json list or a corrupt file.
- JSON is read by `alignlab.untrusted.parse_json`: a key repeated in one object, nesting deeper than
  64 levels, integers of over 100 digits, numbers beyond float range, NaN/Infinity and lone surrogate
  escapes are errors at their line. A CSV header naming a column twice is an error at line 1.
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from alignlab.errors import InputError
from alignlab.untrusted import JSONProblem, clip, parse_json, shown

log = logging.getLogger(__name__)

FILE_KINDS = ("jsonl", "json", "csv", "parquet")
# "name" or "org/name" as the hub allows them: ASCII letters, digits, "_", "-" and ".", each part
# starting and ending with a letter, digit or "_", and no "--" or "..".
HUB_NAME_PART = r"\w(?:[\w.-]*\w)?"
HUB_NAME = re.compile(rf"(?!.*(?:--|\.\.)){HUB_NAME_PART}(?:/{HUB_NAME_PART})?", re.ASCII)
HUB_PROBE_SECONDS = 3.0  # how long the hub has to answer before a hub dataset is refused as unreachable
MAX_LINE_BYTES = 16 << 20  # one record of a .jsonl or .csv file; a longer line is an error, read no further


@dataclass(frozen=True)
class Where:
    """A record's position in its source: for error messages and generated ids."""
    file: str    # the source as the user named it
    unit: str    # "line" (1-based), "record" or "row" (0-based index)
    number: int
    stem: str    # prefix of generated ids

    def __str__(self) -> str:
        return f"{self.unit} {self.number}"

    @property
    def default_id(self) -> str:
        return f"{self.stem}-{self.number}"

    def error(self, problem: str, field: str | None = None, fix: str | None = None) -> InputError:
        if self.unit == "line":
            return InputError(problem, file=self.file, line=self.number, field=field, fix=fix)
        return InputError(problem, file=f"{self.file} {self}", field=field, fix=fix)


@dataclass(frozen=True)
class HubOptions:
    """Which part of a Hugging Face dataset to read: `datasets.load_dataset`'s arguments beside the name."""
    split: str = "train"
    dataset_config: str | None = None  # configuration (subset) name
    data_dir: str | None = None  # folder inside the dataset repository
    revision: str | None = None  # branch, tag or commit


def read_records(source: str, split: str, *, dataset_config: str | None = None, data_dir: str | None = None,
                 revision: str | None = None, numeric_columns: tuple[str, ...] = ()
                 ) -> Iterator[tuple[Where, object]]:
    """Every record of `source` (a local file, a saved dataset directory, else a hub dataset's `split`)
    with its position. `dataset_config`, `data_dir` and `revision` choose what a hub dataset loads;
    `numeric_columns` are CSV columns read as numbers (see the module docstring)."""
    path = Path(source).expanduser()
    if path.is_file():
        return _read_file(path, source, numeric_columns)
    if path.is_dir():
        return _read_saved(path, source, split)
    # Only a plausible dataset name goes to the hub: a missing "data.jsonl" would otherwise wait on
    # network retries before failing.
    if _file_kind(path.name) is not None or not HUB_NAME.fullmatch(source):
        raise InputError("not a file" if path.exists() else "no such file", file=source,
                         fix="Check the path: give a .jsonl, .json, .csv (optionally .gz) or .parquet file, "
                             "a directory written by save_to_disk, or a Hugging Face dataset name")
    return _read_hub(source, HubOptions(split, dataset_config, data_dir, revision))


def _file_kind(name: str) -> tuple[str, bool, str] | None:
    """'test.jsonl.gz' -> ('jsonl', True, 'test'); None for an unsupported name."""
    gzipped = name.lower().endswith(".gz")
    base = name[:-3] if gzipped else name
    for kind in FILE_KINDS:
        if base.lower().endswith("." + kind) and not (gzipped and kind == "parquet"):
            return kind, gzipped, base[: -len(kind) - 1]
    return None


def _read_file(path: Path, display: str, numeric_columns: tuple[str, ...] = ()) -> Iterator[tuple[Where, object]]:
    kind = _file_kind(path.name)
    if kind is None:
        raise InputError("unsupported file type", file=display,
                         fix="Use .jsonl, .json or .csv (each optionally .gz), or .parquet")
    kind, gzipped, stem = kind
    if kind == "parquet":
        return _parquet_records(path, display, stem)
    # A .json document is one value and may be minified onto one line; records elsewhere are lines.
    lines = _read_lines(path, gzipped, display, None if kind == "json" else MAX_LINE_BYTES)
    if kind == "jsonl":
        return _jsonl_records(lines, display, stem)
    if kind == "json":
        return _json_records(lines, display, stem)
    return _csv_records(lines, display, stem, {**_CSV_TYPED_COLUMNS, **dict.fromkeys(numeric_columns, float)})


def _read_lines(path: Path, gzipped: bool, display: str, max_bytes: int | None = None
                ) -> Iterator[tuple[int, str]]:
    """Stream (line number, text); bad UTF-8, broken gzip and (with `max_bytes`) an over-long line
    become InputErrors at their line. An over-long line is never read whole: memory stays bounded."""
    line_no = 0
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as handle:
            # Decode line by line (b"\n" never occurs inside a UTF-8 character) to know where bad bytes are.
            while raw := handle.readline(-1 if max_bytes is None else max_bytes + 1):
                line_no += 1
                if max_bytes is not None and len(raw) > max_bytes:
                    raise InputError(f"line is longer than {max_bytes >> 20} MiB, the limit for one record",
                                     file=display, line=line_no,
                                     fix="Check that the file holds one record per line (a whole JSON list "
                                         "belongs in a .json file); split or shorten oversized records")
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise InputError(f"not valid UTF-8 (bad byte {e.start + 1} of the line)", file=display,
                                     line=line_no, fix="Save the file as UTF-8") from None
                yield line_no, text.removeprefix("\ufeff") if line_no == 1 else text
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputError(f"gzip data is truncated or corrupt ({clip(str(e))})", file=display, line=line_no + 1,
                         fix="Download or compress the file again") from None
    except OSError as e:
        raise InputError(f"cannot read the file ({e.strerror or e})", file=display) from None


def _json_value(text: str, display: str, first_line: int, syntax_fix: str):
    """Parse JSON text that starts at `first_line` of the file; a problem is an InputError at its line."""
    try:
        return parse_json(text)
    except JSONProblem as e:
        line = None if e.line is None else first_line + e.line - 1
        raise InputError(e.problem, file=display, line=line, fix=e.fix or syntax_fix) from None


def _jsonl_records(lines, display: str, stem: str) -> Iterator[tuple[Where, object]]:
    for line_no, text in lines:
        if not text.strip():
            continue
        # Without its line break, so that a record cut short is reported on its own line.
        record = _json_value(text.rstrip("\r\n"), display, line_no, "A .jsonl file must hold one JSON object per line")
        yield Where(display, "line", line_no, stem), record


def _json_records(lines, display: str, stem: str) -> Iterator[tuple[Where, object]]:
    text = "".join(text for _, text in lines)  # a JSON document cannot be parsed in pieces
    data = _json_value(text, display, 1, 'A .json file must hold one list of records (or {"data": [...]}); '
                                         "for one object per line name the file .jsonl")
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list):
        raise InputError(f"the top level is {a_type(data)}", file=display,
                         fix='A .json file must hold a list of records, or an object with that list under "data"')
    for index, record in enumerate(data):
        yield Where(display, "record", index, stem), record


# CSV cells are text; these columns hold ids, numbers or flags (written as pandas does: 0.5, 1, True),
# and an empty cell in them means "no value".
_CSV_TYPED_COLUMNS = {
    "id": str, "reward_chosen": float, "reward_rejected": float, "score_chosen": float, "score_rejected": float,
    "better_response_id": int, "safer_response_id": int,
    "is_response_0_safe": bool, "is_response_1_safe": bool, "label": bool,  # label: unpaired (KTO) records
}


def _csv_cell(column: str, cell: str, typed_columns: dict[str, type]):
    """Parse a typed column's cell; leave unparseable text as it is, for the adapter to report."""
    kind = typed_columns.get(column)
    if kind is None:
        return cell
    if cell == "":
        return None
    if kind is bool:
        return {"true": True, "false": False}.get(cell.lower(), cell)
    try:
        return kind(cell)
    except ValueError:
        return cell


def _check_unique_columns(header: list[str], display: str) -> None:
    seen = set()
    for column in header:
        if column in seen:
            raise InputError(f"column {shown(column)} appears twice in the header", file=display, line=1,
                             fix="Give every column a unique name")
        seen.add(column)


def _csv_records(lines, display: str, stem: str, typed_columns: dict[str, type]) -> Iterator[tuple[Where, object]]:
    reader = csv.reader(text for _, text in lines)
    try:
        header = next(reader, None)
        _check_unique_columns(header or [], display)
        start = reader.line_num + 1  # a quoted cell may span lines: a record is named by its first
        for cells in reader:
            where, start = Where(display, "line", start, stem), reader.line_num + 1
            if not cells:  # blank line
                continue
            if len(cells) != len(header):
                raise where.error(f"{len(cells)} cells, but the header has {len(header)} columns",
                                  fix="Quote cells that contain commas or line breaks")
            yield where, {column: _csv_cell(column, cell, typed_columns) for column, cell in zip(header, cells)}
    except csv.Error as e:
        raise InputError(f"malformed CSV ({clip(str(e))})", file=display, line=reader.line_num) from None


def _parquet_records(path: Path, display: str, stem: str) -> Iterator[tuple[Where, object]]:
    import pyarrow as pa  # imported here: only Parquet needs it
    import pyarrow.parquet as pq

    index = 0
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield Where(display, "row", index, stem), row
                index += 1
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"not a readable Parquet file ({clip(str(e))})", file=display,
                         fix="Write it again with pyarrow or pandas") from None


def _read_saved(path: Path, display: str, split: str) -> Iterator[tuple[Where, object]]:
    """A directory written by `Dataset.save_to_disk` (read whole) or `DatasetDict.save_to_disk`."""
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise InputError("a directory, but no dataset saved by save_to_disk (it has no dataset_dict.json or "
                         "state.json)", file=display,
                         fix="Give a file, a directory written by Dataset.save_to_disk or DatasetDict.save_to_disk, "
                             "or a Hugging Face dataset name")
    try:
        import datasets
        saved = datasets.load_from_disk(str(path))
    except Exception as e:  # damaged or foreign files: whatever datasets raises means "cannot read it"
        raise InputError(f"cannot read the saved dataset ({type(e).__name__}: {clip(str(e))})", file=display,
                         fix="Save it again with save_to_disk") from None
    stem = path.resolve().name
    if isinstance(saved, datasets.DatasetDict):
        _check_split(split, list(saved), display)
        saved, stem = saved[split], f"{stem}-{split}"
    return _rows(saved, display, stem)


def _check_split(split: str, splits: list[str], display: str) -> None:
    if split not in splits:
        raise InputError(f"no split {shown(split)}; the splits are: {', '.join(map(shown, splits))}", file=display,
                         fix="Choose one of them with the split option (--split, data_split)")


def _rows(rows, display: str, stem: str) -> Iterator[tuple[Where, object]]:
    for index, row in enumerate(rows):
        yield Where(display, "row", index, stem), row


def _read_hub(name: str, options: HubOptions) -> Iterator[tuple[Where, object]]:
    import datasets

    if not datasets.config.HF_HUB_OFFLINE:  # offline, datasets reads its cache and never waits on the hub
        _check_hub_answers(name, datasets.config)
    try:
        rows = datasets.load_dataset(name, name=options.dataset_config, data_dir=options.data_dir,
                                     revision=options.revision, split=options.split)
    except Exception as e:  # missing dataset, bad split, no network: all mean "cannot load it"
        _check_split(options.split, _hub_splits(name, options), name)
        raise InputError(f"no such local file, and the Hugging Face hub could not load it as a dataset "
                         f"({type(e).__name__}: {clip(str(e))})", file=name,
                         fix="Check the path, or the dataset name, configuration, data_dir, revision and split"
                         ) from None
    parts = [name.rsplit('/', 1)[-1], options.dataset_config, options.data_dir, options.split]
    stem = "-".join(part.strip("/").replace("/", "-") for part in parts if part)
    return _rows(rows, name, stem)


def _check_hub_answers(name: str, config) -> None:
    """Refuse hub dataset `name` at once when the hub does not answer and datasets holds no copy of it:
    datasets would wait out its retries (about 25 s a request) before failing. With a cached copy the
    load goes ahead, as datasets reads that copy once its retries give up. `config` is datasets.config."""
    problem = _hub_problem(config.HF_ENDPOINT)
    if problem is None:
        return
    if _in_datasets_cache(name, config.HF_DATASETS_CACHE):
        log.warning("%s: the Hugging Face Hub (%s) cannot be reached (%s); datasets reads its cached copy once it "
                    "gives up on the hub (HF_DATASETS_OFFLINE=1 reads it at once)", name, config.HF_ENDPOINT, problem)
        return
    raise InputError(f"not a local file or directory, and the Hugging Face Hub ({config.HF_ENDPOINT}) cannot be "
                     f"reached ({problem}); the datasets cache ({config.HF_DATASETS_CACHE}) holds no copy of it either",
                     file=name, fix="Pass a local file or directory, or run where the hub is reachable (a dataset "
                                    "cached there is then read offline, with HF_DATASETS_OFFLINE=1)")


def _hub_problem(endpoint: str) -> str | None:
    """Why the hub at `endpoint` gives no answer within HUB_PROBE_SECONDS; None when it answers (with any
    status). The request goes through huggingface_hub's session, so its proxies and certificates apply."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=HUB_PROBE_SECONDS)
    except Exception as e:  # refused, no DNS, TLS, proxy, timeout: each means no answer
        return f"{type(e).__name__}: {clip(str(e))}"
    return None


def _in_datasets_cache(name: str, cache_dir) -> bool:
    """Whether datasets has a copy of hub dataset `name` to read without the hub: a directory
    <cache_dir>/<org>___<name>/<config>/<version>/<commit>/ (datasets.load.CachedDatasetModuleFactory)."""
    from datasets.naming import camelcase_to_snakecase

    *org, dataset = name.split("/")
    home = Path(cache_dir).expanduser() / "___".join([*org, camelcase_to_snakecase(dataset)])
    return any(path.is_dir() for path in home.glob("*/*/*"))


def _hub_splits(name: str, options: HubOptions) -> list[str]:
    """The splits a hub dataset has, to name them when loading failed; the split asked for when
    they cannot be found (the dataset is missing or unreachable: the load's own error says so)."""
    try:
        import datasets
        return list(datasets.get_dataset_split_names(name, options.dataset_config, data_dir=options.data_dir,
                                                     revision=options.revision))
    except Exception:  # the load's error is the one to report
        return [options.split]


def a_type(value) -> str:
    """'a string', 'an object', ...: JSON's names for what a field holds."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "a list", dict: "an object"}.get(type(value), f"a {type(value).__name__}")
