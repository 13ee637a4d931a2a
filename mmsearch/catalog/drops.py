"""Catalog drops: finding them, copying them in, and reading their products and queries.

A drop is a directory with exactly one of products.csv / products.parquet / products.jsonl, the
images it refers to, and optionally queries.jsonl (docs/interface.md). Reading returns every row as
text; deciding what is usable is the cleaning stage's job. A drop that cannot be read at all
raises DropRejected naming the drop and the problem.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from mmsearch.catalog.columns import KNOWN_COLUMNS, REQUIRED_COLUMNS
from mmsearch.settings import drop_folder_name

PRODUCT_FILES = ("products.csv", "products.parquet", "products.jsonl")
QUERY_FILE = "queries.jsonl"
# A row whose JSON line cannot be parsed is still a row; this column carries why.
READ_ERROR = "_read_error"


# Where the repo describes the drop and query file formats; refusals point there.
FORMAT_DOC = "docs/interface.md"


class DropRejected(ValueError):
    """A drop that cannot be read at all; the message names the drop and the problem."""

    def __init__(self, drop_name: str, problem: str):
        super().__init__(f"drop {drop_name!r} rejected: {problem} (the drop format: {FORMAT_DOC})")
        self.drop_name = drop_name
        self.problem = problem


def products_file(drop_dir: Path) -> Path:
    """The one products file of a drop, or DropRejected."""
    found = [drop_dir / name for name in PRODUCT_FILES if (drop_dir / name).is_file()]
    if not found:
        raise DropRejected(
            drop_dir.name, f"no products file (expected one of {', '.join(PRODUCT_FILES)})"
        )
    if len(found) > 1:
        names = ", ".join(path.name for path in found)
        raise DropRejected(
            drop_dir.name, f"more than one products file ({names}); keep exactly one"
        )
    return found[0]


def _decode(drop_name: str, data: bytes) -> str:
    """Text of a products file: UTF-16 when it starts with UTF-16's byte order mark (Excel's
    "Unicode Text"), else UTF-8 (with or without BOM), else strict Windows-1252."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise DropRejected(
                drop_name, "products file starts with a UTF-16 byte order mark but is not UTF-16"
            ) from None
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DropRejected(drop_name, "products file is neither UTF-8 nor Windows-1252 text")


def _read_csv(drop_name: str, data: bytes) -> pd.DataFrame:
    """The rows of products.csv as text (a missing trailing field is None). A row with more
    fields than the header (empty ones past it aside), or quoting the reader cannot follow,
    keeps its place with its error (`READ_ERROR`), to be quarantined; a header that cannot be
    read rejects the drop."""
    text = _decode(drop_name, data)
    if "\x00" in text:
        raise DropRejected(drop_name, "products.csv contains NUL bytes; it is not a text table")
    delimiter = _delimiter(text)
    header: list[str] | None = None
    rows: list[list[str | None]] = []
    errors: list[str | None] = []
    for line, cells, error in _csv_records(text, delimiter):
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # a blank line
        if header is None:
            if error:
                raise DropRejected(
                    drop_name, f"products.csv is not a readable table (line {line}: {error})"
                )
            header = _column_names(cells)
            continue
        width = len(header)
        # A comma after every value, the last included, leaves empty fields past the header.
        while len(cells) > width and not error and not cells[-1].strip():
            cells = cells[:-1]
        if error:
            errors.append(
                f"row {len(rows) + 1} (line {line}) is not readable CSV ({error}); a value "
                'holding a quote needs double quotes around it and the quote doubled ("")'
            )
        elif len(cells) > width:
            errors.append(
                f"row {len(rows) + 1} (line {line}) has {len(cells)} fields where the header "
                f"has {width}; a value holding a {_DELIMITER_NAMES[delimiter]} needs double quotes"
            )
        else:
            errors.append(None)
        rows.append([*cells[:width], *[None] * (width - len(cells))])
    if header is None:
        raise DropRejected(drop_name, "products.csv is empty")
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    if any(errors):
        frame[READ_ERROR] = errors
    return frame


_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}


def _delimiter(text: str) -> str:
    """What separates the values of a products.csv: `,`, or `;` or a tab when only that splits
    the header into the required columns (Excel saves CSV with `;` in many European locales,
    and its "Unicode Text" with tabs)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    for delimiter in _DELIMITER_NAMES:
        names = {c.strip().lower() for c in next(csv.reader([first], delimiter=delimiter), [])}
        if set(REQUIRED_COLUMNS) <= names:
            return delimiter
    return ","


def _csv_records(text: str, delimiter: str) -> Iterator[tuple[int, list[str], str | None]]:
    """(line number, cells, None) per record of a text of values separated by `delimiter`, a
    quoted value holding line breaks included. Quoting is read strictly: a record whose quoting
    the reader cannot follow (a quote left open, which would swallow the rows after it, or text
    after a closing quote) comes back as its first line's cells split at the delimiter, with
    the reader's error instead of None, and reading goes on from the line after that one."""
    lines = io.StringIO(text, newline="").readlines()
    start = 0
    while start < len(lines):
        # Lines from `start` on, read as the reader asks: no copy of the rest per restart.
        rest = (lines[at] for at in range(start, len(lines)))
        reader = csv.reader(rest, delimiter=delimiter, strict=True)
        first = start
        try:
            for cells in reader:
                yield first + 1, cells, None
                first = start + reader.line_num
            return
        except csv.Error as error:
            yield first + 1, lines[first].rstrip("\r\n").split(delimiter), str(error)
            start = first + 1


def _column_names(cells: list[str]) -> list[str]:
    """Header cells as distinct names, as pandas names them: a blank one `Unnamed: <i>`, a
    repeated one `<name>.1`, `<name>.2`, ..."""
    names: list[str] = []
    for index, cell in enumerate(cells):
        name = cell if cell.strip() else f"Unnamed: {index}"
        base, copy = name, 0
        while name in names:
            copy += 1
            name = f"{base}.{copy}"
        names.append(name)
    return names


def _read_jsonl(drop_name: str, data: bytes) -> pd.DataFrame:
    text = _decode(drop_name, data)
    records: list[dict] = []
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as error:
            records.append({READ_ERROR: f"line {line_number} is not a JSON object ({error})"})
            continue
        if not isinstance(value, dict):
            kind = _JSON_KINDS.get(type(value), type(value).__name__)
            records.append({READ_ERROR: f"line {line_number} is not a JSON object but {kind}"})
            continue
        records.append(_jsonl_record(line_number, value))
    if not records:
        raise DropRejected(drop_name, "products.jsonl has no rows")
    frame = pd.DataFrame.from_records(records)
    if READ_ERROR in frame.columns and frame[READ_ERROR].notna().all():
        raise DropRejected(drop_name, "products.jsonl has no line that is a JSON object")
    return frame


_JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def _jsonl_record(line_number: int, value: dict) -> dict:
    """One JSON line's fields as text, under column names as `read_products` spells them (lines
    may differ in case: `Title` and `title` are one column); a line naming a column twice keeps
    its first spelling and carries its error."""
    record: dict = {}
    spelled: dict[str, str] = {}
    for key, item in value.items():
        name = str(key).strip().lower()
        if name in spelled:
            record[READ_ERROR] = (
                f"line {line_number} names {name} twice (as {spelled[name]!r} and {key!r})"
            )
            continue
        spelled[name] = key
        record[name] = _as_text(item)
    return record


def _read_parquet(drop_name: str, path: Path) -> pd.DataFrame:
    try:
        # Nullable types: an integer column with a NULL stays integers (ids "1001", not
        # "1001.0"), where NumPy's would turn it into floats.
        frame = pd.read_parquet(path, dtype_backend="numpy_nullable")
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise DropRejected(
            drop_name, f"products.parquet is not a readable table ({error})"
        ) from None
    return frame.map(_as_text) if len(frame) else frame.astype(object)


def _as_text(value: object) -> str | None:
    """A feed value as text; None stays None, containers become JSON."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return None  # also NaN, NaT and pd.NA: no value, not the text "NaT"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if hasattr(value, "tolist"):
        return json.dumps(value.tolist(), ensure_ascii=False, default=str)
    return str(value)


def read_products(drop_dir: Path) -> pd.DataFrame:
    """Every row of a drop's products file as text, with a 1-based `row_number`.

    Known columns are kept by name (missing optional ones are added empty); other columns are
    gathered into an `attributes` JSON object per row. Raises DropRejected when the drop cannot
    be read at all or lacks a required column.
    """
    drop_name = drop_dir.name
    path = products_file(drop_dir)
    if path.suffix == ".csv":
        frame = _read_csv(drop_name, path.read_bytes())
    elif path.suffix == ".jsonl":
        frame = _read_jsonl(drop_name, path.read_bytes())
    else:
        frame = _read_parquet(drop_name, path)
    frame.columns = [str(column).strip().lower() for column in frame.columns]
    if frame.columns.duplicated().any():
        duplicated = sorted(set(frame.columns[frame.columns.duplicated()]))
        raise DropRejected(drop_name, f"duplicate column names {duplicated}")
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise DropRejected(drop_name, f"{path.name} lacks required column(s) {', '.join(missing)}")
    frame = _nulls_as_none(frame)
    extra = [c for c in frame.columns if c not in KNOWN_COLUMNS and c != READ_ERROR]
    out = pd.DataFrame({"row_number": range(1, len(frame) + 1)})
    for column in (*KNOWN_COLUMNS, READ_ERROR):
        out[column] = frame[column].tolist() if column in frame.columns else None
    out["attributes"] = (
        [
            json.dumps({c: row[c] for c in extra if row[c] not in (None, "")}, ensure_ascii=False)
            for row in frame[extra].to_dict("records")
        ]
        if extra
        else "{}"
    )
    return _nulls_as_none(out)


def read_queries(query_file: Path, skipped: list[dict] | None = None) -> pd.DataFrame:
    """Labeled queries (docs/interface.md) with a 1-based `line_number`; bad lines are skipped,
    each added to `skipped` when given as `{"line", "why", "scored": False}`.

    Returns columns query_id, text, image_path, relevant (JSON text: object id -> grade), kind,
    template (optional: which generator template made the query; used to split by template).
    """
    rows = []
    for line_number, line in enumerate(
        query_file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1
    ):
        if not line.strip():
            continue
        record, why = _query_record(line)
        if why:
            if skipped is not None:
                skipped.append({"line": line_number, "why": why, "scored": False})
            continue
        text, image_path = record.get("text"), record.get("image_path")
        rows.append(
            {
                "line_number": line_number,
                "query_id": str(record["query_id"]),
                "text": str(text) if text else None,
                "image_path": str(image_path) if image_path else None,
                "relevant": json.dumps(_grades(record["relevant"])),
                "kind": str(record.get("kind") or _default_kind(text, image_path)),
                "template": str(record["template"]) if record.get("template") else None,
            }
        )
    columns = ["line_number", "query_id", "text", "image_path", "relevant", "kind", "template"]
    return _nulls_as_none(pd.DataFrame(rows, columns=columns))


def _query_record(line: str) -> tuple[dict, str | None]:
    """A query line's object, and why it is no labeled query (None when it is one)."""
    try:
        record = json.loads(line)
    except ValueError as error:
        return {}, f"not JSON ({error})"
    if not isinstance(record, dict):
        return {}, "not a JSON object"
    if not record.get("query_id"):
        return record, "no query_id"
    if not _grades(record.get("relevant")):
        return record, (
            "relevant is missing or empty, or a grade is not a number "
            "(a list of product ids, or an object product id -> grade)"
        )
    if not record.get("text") and not record.get("image_path"):
        return record, "neither text nor image_path"
    return record, None


def _grades(relevant: object) -> dict[str, float] | None:
    """A query line's `relevant` as product id -> grade: a list grades each id 1; None when
    it is neither, or a grade is not a finite number (`"high"`, null), so the line is skipped."""
    if isinstance(relevant, list):
        relevant = dict.fromkeys(map(str, relevant), 1)
    if not isinstance(relevant, dict):
        return None
    grades = {}
    for product_id, grade in relevant.items():
        try:
            grades[str(product_id)] = float(grade)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(grades[str(product_id)]):
            return None
    return grades


def _nulls_as_none(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns with None for missing values (pandas would otherwise use NaN)."""
    return frame.astype(object).where(frame.notna(), None)


def _default_kind(text: object, image_path: object) -> str:
    if text and image_path:
        return "image+text"
    return "image" if image_path else "text"


class FileDigests:
    """sha256 digests of landed files, remembered with each file's size, times and inode.

    A sensor tick or `mmsearch run` hashes every landed drop to notice changed files; with this
    memo only files whose stat changed are read again (the inode change time cannot be set
    back, so a rewritten file is always re-read). Kept as JSON under MM_HOME, written whole
    by write-then-rename; without a path it remembers nothing between calls.
    """

    def __init__(self, path: Path | None = None):
        self.path = path
        self._known: dict[str, list] = {}
        if path is not None and path.is_file():
            try:
                self._known = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._known = {}  # a damaged memo only costs a re-read
        self._seen: dict[str, list] = {}

    def digest(self, file: Path) -> bytes:
        stat = file.stat()
        signature = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
        name = str(file.absolute())
        known = self._known.get(name)
        if known is not None and known[:4] == signature:
            digest = bytes.fromhex(known[4])
        else:
            digest = hashlib.sha256(file.read_bytes()).digest()
        self._seen[name] = [*signature, digest.hex()]
        return digest

    def save(self) -> None:
        """Write the memo back: what was seen now, plus earlier entries whose file still exists."""
        if self.path is None:
            return
        kept = {
            name: entry
            for name, entry in self._known.items()
            if name not in self._seen and os.path.exists(name)
        }
        memo = kept | self._seen
        if memo == self._known:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(f".{os.getpid()}.partial")
            partial.write_text(json.dumps(memo), encoding="utf-8")
            partial.replace(self.path)
        except OSError:
            return  # a read-only home hashes again next time


def drop_content_hash(drop_dir: Path, digests: FileDigests | None = None) -> str:
    """A hash of a drop's file names and bytes (symlinks by their target text, not followed)."""
    digests = digests or FileDigests()
    digest = hashlib.sha256()
    for path in sorted(drop_dir.rglob("*")):
        digest.update(str(path.relative_to(drop_dir)).encode())
        if path.is_symlink():
            digest.update(b"->" + str(path.readlink()).encode())
        elif path.is_file():
            digest.update(digests.digest(path))
    return digest.hexdigest()


def copy_drop(source: Path, landing: Path) -> str:
    """Copy a drop directory into the landing folder; returns the drop's name there.

    The same content under the same name is a no-op. Different content under a taken name lands
    as `<name>-v2`, `-v3`, ... so no landed drop is ever silently overwritten. Symlinks are copied
    as links, never followed, so no file outside the drop is copied in. A drop that cannot be
    read at all (no products file, a missing required column, not a table) is refused here,
    with the reason the pipeline would give, and nothing lands.
    """
    source = Path(source)
    if not source.is_dir():
        raise DropRejected(source.name, f"{source} is not a directory")
    read_products(source)
    wanted = drop_content_hash(source)
    name, version = source.name, 1
    while (landing / name).exists():
        if drop_content_hash(landing / name) == wanted:
            return name
        version += 1
        name = f"{source.name}-v{version}"
    partial = landing / f".{name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, symlinks=True)
    partial.rename(landing / name)
    return name


# A drop whose files change after ingestion is ingested again as a new version, keyed
# `<folder>@<first 10 hex digits of its content hash>`; the first version is keyed by the folder name.
VERSION_MARK = "@"


def pending_drop_versions(
    landing: Path, known: dict[str, str | None], digests: FileDigests | None = None
) -> list[tuple[str, str]]:
    """(drop key, content hash) of every landed drop not yet ingested in its current content.

    `known` maps the drop keys already registered to the content hash they were ingested with
    (None while not yet ingested). A new folder gets its own name as key; a folder whose content
    differs from every version already known becomes a new version; content seen before is
    not ingested again. `digests` spares re-reading files unchanged since the last call.
    """
    digests = digests or FileDigests()
    pending = []
    for name in landed_drops(landing):
        versions = {key: digest for key, digest in known.items() if drop_folder_name(key) == name}
        if versions and ({None, ""} & set(versions.values())):
            continue  # a version waits for its ingestion run, or predates content hashes
        digest = drop_content_hash(landing / name, digests)
        if not versions:
            pending.append((name, digest))
        elif digest not in versions.values():
            pending.append((f"{name}{VERSION_MARK}{digest[:10]}", digest))
    digests.save()
    return pending


def landed_drops(landing: Path) -> list[str]:
    """Names of the drop directories in the landing folder, in name order."""
    if not landing.exists():
        return []
    return sorted(
        path.name for path in landing.iterdir() if path.is_dir() and not path.name.startswith(".")
    )
