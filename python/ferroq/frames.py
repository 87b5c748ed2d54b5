"""DataFrames in and out: :func:`enqueue_frame` turns each row of a Polars
DataFrame into one task, and :func:`results_frame` reads a batch's outcomes
back as a DataFrame. Both are columnar: payloads, keys and decoded results
are built by Polars expressions and handed to or taken from the Rust store
in one call (per 100,000 rows, to bound memory), never by a Python loop
over rows.

How rows are stored:

* payload: ``J`` + ``[[], {column: value, ...}]`` — the row's columns as
  keyword arguments, JSON as Polars writes it (dates and times as ISO 8601
  text, which the function's annotations turn back into ``date`` etc.);
* key (idempotency): with one key column, the value as text (strings as
  they are; numbers, booleans, dates and times as their JSON text without
  quotes: ``17``, ``2024-01-31``); with several, the JSON object of the key
  columns in the order given: ``{"id":17,"day":"2024-01-31"}``;
* the batch's key columns and their types are kept once per batch in the
  store's key/value table (the listen data, under ``ferroq:frame:<batch>``),
  so :func:`results_frame` gives the key columns back with their types.

By default a batch lives in its own queue, ``batch:<batch>``, so keys are
scoped to the batch and :meth:`Queue.process` serves exactly that batch.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

from ._errors import InvalidArgumentError, SerializationError
from ._polars import from_text, pl, read_as_text
from ._types import FINISHED
from .backoff import Backoff
from .options import TaskOptions, check_retries
from .registry import lookup, registered
from .serialization import decode
from .task import make_task
from .task_function import TaskFunction

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = [
    "FINISHED",
    "FrameSummary",
    "batch_queue",
    "enqueue_frame",
    "results_frame",
]

#: The key column :meth:`Queue.process` adds when rows are keyed by position.
ROW = "row"
# Most payload bytes and rows handed to the store per call. A larger frame
# goes in several calls: the store holds each row of a call as its own
# record until the call commits (about 900 B per row: 1,000,000 rows in one
# call peaked at 900 MB, in calls of 100,000 at 330 MB, for 15% less speed).
_CHUNK_BYTES = 64 << 20
_CHUNK_ROWS = 100_000
_MANIFEST = "ferroq:frame:"


def batch_queue(batch: str) -> str:
    """The queue a batch lives in unless told otherwise."""
    return f"batch:{batch}"


@dataclass(frozen=True)
class FrameSummary:
    """What :func:`enqueue_frame` stored."""

    #: The batch label the rows carry.
    batch: str
    #: The queue they went to.
    queue: str
    #: Rows stored as new tasks.
    inserted: int
    #: Rows whose key was already present (nothing stored for them).
    skipped: int

    @property
    def rows(self) -> int:
        """Rows in the frame."""
        return self.inserted + self.skipped


def as_frame(df: Any) -> pl.DataFrame:
    """A Polars DataFrame from a DataFrame, LazyFrame or pandas frame."""
    if isinstance(df, pl.DataFrame):
        return df
    if isinstance(df, pl.LazyFrame):
        return df.collect()
    if type(df).__module__.startswith("pandas"):
        return pl.from_pandas(df)
    try:
        return pl.DataFrame(df)
    except Exception as e:
        raise InvalidArgumentError(f"expected a Polars DataFrame, got {type(df).__name__}") from e


def as_task(queue: Connection, task: Union[Callable[..., Any], str]) -> TaskFunction[Any, Any]:
    """The registered task for ``task``: a task function as it is, a name
    looked up, a plain function registered (once) under ``module:qualname``."""
    if isinstance(task, TaskFunction):
        return task
    if isinstance(task, str):
        return lookup(task)
    if not callable(task):
        raise InvalidArgumentError(f"task= needs a function or a task name, got {task!r}")
    name = f"{getattr(task, '__module__', '')}:{getattr(task, '__qualname__', repr(task))}"
    known = registered().get(name)
    if known is not None and known.fn is task:
        return known
    return make_task(task, queue, None, TaskOptions(serializer=queue.serializer))


def _unsupported(dtype: Any) -> bool:
    """True for types Polars cannot write as JSON (it would panic)."""
    if dtype in (pl.Binary, pl.Object):
        return True
    if isinstance(dtype, (pl.List, pl.Array)):
        return _unsupported(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_unsupported(f.dtype) for f in dtype.fields)
    return False


def _arguments(df: pl.DataFrame, fn: TaskFunction[Any, Any], key_cols: list[str]) -> list[str]:
    """The columns sent as keyword arguments: every column, except key
    columns the function does not take (they only key the row). Refuses
    columns that cannot be JSON and frames that do not fit the function."""
    bad = [c for c, t in df.schema.items() if _unsupported(t)]
    if bad:
        raise SerializationError(
            f"columns {bad} cannot be sent as JSON (binary or Python objects); "
            "encode them as text first (e.g. base64)"
        )
    params = inspect.signature(fn.fn).parameters.values()
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return df.columns
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    columns = [c for c in df.columns if c in named or c not in key_cols]
    extra = [c for c in columns if c not in named]
    if extra:
        raise InvalidArgumentError(
            f"columns {extra} are not parameters of {fn.name}; select the columns it takes"
        )
    missing = [
        p.name
        for p in params
        if p.name in named and p.default is p.empty and p.name not in df.columns
    ]
    if missing:
        raise InvalidArgumentError(f"{fn.name} needs parameters {missing}, not in the frame")
    return columns


def _key_text(keys: pl.DataFrame) -> tuple[pl.Series, bool]:
    """The key strings of every row, and whether a single non-string key's
    JSON text was quoted (dates, times, decimals) before its quotes were
    removed."""
    cols = keys.columns
    nulls = [c for c in cols if keys[c].null_count()]
    if nulls:
        raise InvalidArgumentError(f"key columns {nulls} have null values")
    if len(cols) > 1:
        return keys.select(pl.struct(cols).struct.json_encode()).to_series(), False
    c = cols[0]
    if keys.schema[c] in (pl.String, pl.Categorical) or isinstance(keys.schema[c], pl.Enum):
        return keys[c].cast(pl.String), False
    text = keys.select(
        pl.struct(pl.col(c).alias("k")).struct.json_encode().str.slice(5).str.strip_suffix("}")
    ).to_series()
    quoted = bool(text.len() and text.str.starts_with('"').any())
    if quoted:
        text = text.str.strip_prefix('"').str.strip_suffix('"')
    return text, quoted


def _manifest(keys: pl.DataFrame, quoted: bool) -> bytes:
    buf = io.BytesIO()
    keys.clear().write_ipc(buf)
    doc = {
        "version": 1,
        "key": keys.columns,
        "quoted": quoted,
        "schema": base64.b64encode(buf.getvalue()).decode(),
    }
    return b"J" + json.dumps(doc).encode()


def _read_manifest(queue: Connection, batch: str) -> Optional[tuple[list[str], bool, pl.Schema]]:
    found = queue._store.listen_get(_MANIFEST + batch)
    if found is None:
        return None
    doc = decode(found[1], allow_pickle=False)
    schema = pl.read_ipc(io.BytesIO(base64.b64decode(doc["schema"]))).schema
    return list(doc["key"]), bool(doc["quoted"]), schema


def _record_manifest(queue: Connection, batch: str, keys: pl.DataFrame, quoted: bool) -> None:
    known = _read_manifest(queue, batch)
    if known is not None:
        cols, _, schema = known
        if cols != keys.columns or dict(schema) != dict(keys.schema):
            raise InvalidArgumentError(
                f"batch {batch!r} was enqueued with key columns {dict(schema)}, "
                f"not {dict(keys.schema)}; use another batch label"
            )
        return
    queue._store.listen_set(_MANIFEST + batch, _manifest(keys, quoted))


def _chunks(sizes: pl.Series) -> list[tuple[int, int]]:
    """(offset, length) slices of at most ``_CHUNK_ROWS`` rows and about
    ``_CHUNK_BYTES`` of payload each."""
    n = sizes.len()
    total = int(sizes.sum() or 0)
    cuts = set(range(_CHUNK_ROWS, n, _CHUNK_ROWS))
    if total > _CHUNK_BYTES:
        ends = sizes.cum_sum()
        marks = pl.Series(range(_CHUNK_BYTES, total, _CHUNK_BYTES), dtype=ends.dtype)
        cuts |= {int(c) for c in ends.search_sorted(marks, side="right").to_list()}
    bounds = sorted({0, n} | {c for c in cuts if 0 < c < n})
    return [(a, b - a) for a, b in zip(bounds, bounds[1:])]


def enqueue_frame(
    queue: Connection,
    df: Any,
    *,
    task: Union[Callable[..., Any], str],
    key: Union[str, Sequence[str], None] = None,
    batch: Optional[str] = None,
    priority: Optional[int] = None,
    queue_name: Optional[str] = None,
    retries: Optional[int] = None,
    backoff: Optional[Backoff] = None,
    by_position: bool = False,
) -> FrameSummary:
    """See :meth:`Queue.enqueue_frame`. ``by_position`` keys rows by their
    position in the frame (a ``row`` key column) when ``key`` is None."""
    fn = as_task(queue, task)
    frame = as_frame(df)
    batch = batch or fn.name
    qname = queue_name or batch_queue(batch)
    d = fn.defaults
    retries = d.retries if retries is None else retries
    check_retries(retries)
    key_cols = [key] if isinstance(key, str) else list(key or [])
    missing = [c for c in key_cols if c not in frame.columns]
    if missing:
        raise InvalidArgumentError(f"key columns {missing} are not in the frame")
    arguments = _arguments(frame, fn, key_cols)
    if key_cols:
        keys_df: Optional[pl.DataFrame] = frame.select(key_cols)
    elif by_position:
        keys_df = pl.DataFrame({ROW: pl.int_range(frame.height, dtype=pl.Int64, eager=True)})
    else:
        keys_df = None
    if frame.height == 0:
        return FrameSummary(batch, qname, 0, 0)

    keys: Optional[pl.Series] = None
    if keys_df is not None:
        keys, quoted = _key_text(keys_df)
        _record_manifest(queue, batch, keys_df, quoted)
    payload = frame.select(
        pl.concat_str(
            [pl.lit("J[[],"), pl.struct(arguments).struct.json_encode(), pl.lit("]")]
        ).cast(pl.Binary)
    ).to_series()
    backoff = backoff or d.backoff
    inserted = 0
    for offset, length in _chunks(payload.bin.size()):
        ks = keys.slice(offset, length).to_list() if keys is not None else None
        _ids, flags = queue._store.enqueue_many(
            qname,
            fn.name,
            payload.slice(offset, length).to_list(),
            priority=d.priority if priority is None else priority,
            max_attempts=retries + 1,
            keys=ks,
            batch=batch,
            backoff=backoff.encode() if backoff is not None else None,
            result_ttl_ms=int(d.result_ttl * 1000) if d.result_ttl is not None else None,
        )
        inserted += sum(flags)
    return FrameSummary(batch, qname, inserted, frame.height - inserted)


def _decode_keys(
    key: pl.Series, manifest: Optional[tuple[list[str], bool, pl.Schema]]
) -> pl.DataFrame:
    if manifest is None:
        return pl.DataFrame({"key": key}) if key.null_count() < key.len() else pl.DataFrame()
    cols, quoted, schema = manifest
    # Types JSON cannot name, dates and times come back as text, converted after.
    as_json = {c: pl.String if read_as_text(t) else t for c, t in schema.items()}
    if len(cols) == 1:
        (c,) = cols
        if as_json[c] == pl.String:
            out = pl.DataFrame({c: key})
        else:
            q = '"' if quoted else ""
            wrapped = pl.DataFrame({"k": key}).select(
                pl.concat_str([pl.lit('{"k":' + q), pl.col("k"), pl.lit(q + "}")])
            )
            decoded = wrapped.to_series().str.json_decode(pl.Struct({"k": as_json[c]}))
            out = pl.DataFrame({c: decoded.struct.field("k")})
    else:
        out = key.str.json_decode(pl.Struct(as_json)).struct.unnest()
    return out.with_columns(from_text(pl.col(c), t) for c, t in schema.items() if as_json[c] != t)


def _error_text() -> pl.Expr:
    """Stored errors are JSON (type, message, traceback) or plain text: show
    ``Type: message``."""
    err = pl.col("error")
    kind = err.str.json_path_match("$.type").str.strip_prefix("builtins.")
    message = err.str.json_path_match("$.message")
    return (
        pl.when(err.str.starts_with("{") & kind.is_not_null())
        .then(pl.concat_str([kind, pl.lit(": "), message.fill_null("")]))
        .otherwise(err)
        .alias("error")
    )


def _result_text(cols: dict[str, list[Any]], allow_pickle: bool) -> pl.Series:
    """The JSON text of every result; results stored another way (pickle)
    have no vectorised decoder and are turned into JSON one by one."""
    raw = cols["result_raw"]
    if all(r is None for r in raw):
        return pl.Series("result", cols["result"], dtype=pl.String)
    values = [
        json.dumps(decode(r, allow_pickle=allow_pickle)) if r is not None else t
        for r, t in zip(raw, cols["result"])
    ]
    return pl.Series("result", values, dtype=pl.String)


def _decode_results(text: pl.Series) -> pl.Series:
    try:
        return text.str.json_decode(infer_schema_length=None).alias("result")
    except pl.exceptions.PolarsError:
        # Results of mixed shapes (a number here, an object there) have no
        # one column type: keep them as JSON text.
        return text


def results_frame(
    queue: Connection,
    batch: Optional[str] = None,
    *,
    queue_name: Optional[str] = None,
    model: Optional[type[Any]] = None,
    include: Union[str, Sequence[str], None] = FINISHED,
) -> pl.DataFrame:
    """See :meth:`Queue.results_frame`."""
    if batch is None and queue_name is None:
        raise InvalidArgumentError("results_frame needs a batch (or a queue=)")
    statuses = [include] if isinstance(include, str) else list(include or [])
    cols = queue._store.results_columns(batch=batch, queue=queue_name, statuses=statuses or None)
    ids = pl.DataFrame({"task_id": pl.Series(cols["id"], dtype=pl.Int64)})
    key_text = pl.Series("key", cols["key"], dtype=pl.String)
    meta = pl.DataFrame(
        {
            "status": pl.Series(cols["status"], dtype=pl.String),
            "attempts": pl.Series(cols["attempts"], dtype=pl.Int64),
            "error": pl.Series(cols["error"], dtype=pl.String),
        }
    )
    results = _result_text(cols, queue.allow_pickle)
    del cols  # a million Python strings: let them go before decoding
    manifest = _read_manifest(queue, batch) if batch is not None else None
    keys = _decode_keys(key_text, manifest)
    meta = meta.with_columns(_error_text())
    if model is None:
        meta = meta.with_columns(_decode_results(results))
    # A key column keeps its name; a meta column it would clash with
    # (``status``, say) is called ``task_status`` instead.
    meta = meta.rename({c: f"task_{c}" for c in meta.columns if c in keys.columns})
    out = pl.concat([ids, keys, meta] if keys.width else [ids, meta], how="horizontal")
    if model is None:
        return out
    from .frame_models import validate_results

    typed = validate_results(results, model)
    typed = typed.rename({c: f"result_{c}" for c in typed.columns if c in out.columns})
    return pl.concat([out, typed], how="horizontal")
