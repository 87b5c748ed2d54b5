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

A function that takes one parameter gets a frame's one argument column
positionally, whatever the column is called (payload ``J[[value], {}]``).
Rows may also be enqueued alone (no function): they carry every column and
the task name :data:`ROWS_TASK`, and only ``Queue.process(fn, batch=...)``
runs them, fitting the columns to ``fn`` when it starts. The manifest
records which task names a batch's rows were stored under, so a run with
another function is refused (:func:`check_function`) instead of running
the stored one silently.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import os
import sys
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
    "ROWS_TASK",
    "FrameSummary",
    "Manifest",
    "batch_queue",
    "check_function",
    "default_batch",
    "enqueue_frame",
    "fit_rows",
    "read_manifest",
    "results_frame",
    "same_function",
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
#: The task name of rows enqueued without a function: only
#: ``Queue.process(fn, batch=...)`` runs them (with ``fn``).
ROWS_TASK = "ferroq.frames:rows"


def batch_queue(batch: str) -> str:
    """The queue a batch lives in unless told otherwise."""
    return f"batch:{batch}"


def default_batch(queue: Connection, task_name: str) -> str:
    """The batch label of a function's rows when none is given: its task
    name, or the label of the one batch this store already has for the same
    function under another module path (``job:summarize`` from ``python
    job.py``, ``app.job:summarize`` when imported as ``app.job``), so every
    way of starting a job resumes the same batch."""
    module, sep, qualname = task_name.rpartition(":")
    if sep and module in ("__main__", "__mp_main__"):
        # A script whose import name could not be worked out: its file's name.
        file = getattr(sys.modules.get(module), "__file__", None)
        if isinstance(file, str):
            task_name = f"{os.path.splitext(os.path.basename(file))[0]}:{qualname}"
    labels = {
        key[len(_MANIFEST) :]
        for _v, key, _value, _at in queue._store.listen_keys()
        if key.startswith(_MANIFEST)
    }
    if task_name in labels:
        return task_name
    same = [label for label in labels if same_function(label, task_name)]
    return same[0] if len(same) == 1 else task_name


def same_function(a: str, b: str) -> bool:
    """Whether two stored task names name the same function: equal, or the
    same qualified name in a module path that ends the other's
    (``job:fn`` and ``app.job:fn``: one module imported two ways)."""
    if a == b:
        return True
    ma, _, qa = a.rpartition(":")
    mb, _, qb = b.rpartition(":")
    return qa == qb and (ma.endswith("." + mb) or mb.endswith("." + ma))


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


@dataclass(frozen=True)
class Fit:
    """How a batch's stored columns become a function's arguments."""

    #: Columns passed as keyword arguments (None: every column, ``**kwargs``).
    columns: Optional[list[str]]
    #: The one column passed positionally, when the function takes one
    #: parameter named otherwise.
    single: Optional[str] = None


def _refuse_unsupported(df: pl.DataFrame) -> None:
    bad = [c for c, t in df.schema.items() if _unsupported(t)]
    if bad:
        raise SerializationError(
            f"columns {bad} cannot be sent as JSON (binary or Python objects); "
            "encode them as text first (e.g. base64)"
        )


def fit_columns(fn: Callable[..., Any], name: str, columns: list[str], key_cols: list[str]) -> Fit:
    """Which of ``columns`` ``fn`` gets, and how: every column except key
    columns it does not take, by name. A function of one parameter named
    after no column gets one column positionally, as a batch runner passes
    its input column whatever the parameter is called: the one column that
    is not a key, or, when every column is a key column (``batch_id,
    input_text``), the last. Refuses columns that do not fit with
    :class:`InvalidArgumentError`."""
    params = list(inspect.signature(fn).parameters.values())
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return Fit(None)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    passed = [c for c in columns if c in named or c not in key_cols]
    extra = [c for c in passed if c not in named]
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required = [p for p in params if p.default is p.empty and p.kind != p.VAR_POSITIONAL]
    one_parameter = bool(positional) and len(required) <= 1 and (
        not required or required[0] is positional[0]
    )
    if one_parameter and not any(c in named for c in columns) and columns:
        # The input column: the one that is not only a key; when every column
        # keys the rows (``batch_id, input_text``), the last one.
        if len(passed) == 1:
            return Fit([], single=passed[0])
        if not passed:
            return Fit([], single=columns[-1])
    if extra:
        raise InvalidArgumentError(
            f"columns {extra} are not parameters of {name}; select the columns it takes"
        )
    missing = [p.name for p in required if p.name in named and p.name not in columns]
    if missing:
        raise InvalidArgumentError(f"{name} needs parameters {missing}, not in the frame")
    return Fit(passed)


def fit_rows(fn: TaskFunction[Any, Any], manifest: Optional[Manifest]) -> Callable[..., Any]:
    """``fn.fn`` as it must be called on rows stored another way than for
    it (rows enqueued alone, or for another function): stored keyword
    arguments fitted by :func:`fit_columns`, then turned into ``fn``'s
    annotated types. Rows stored positionally are passed as they are."""
    cols = manifest.columns if manifest is not None else []
    keys = manifest.key if manifest is not None else []
    fit = fit_columns(fn.fn, fn.name, cols, keys) if cols else Fit(None)
    binder, target = fn.binder, fn.fn

    def arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, Any]:
        if args or fit.columns is None:
            return binder.args(list(args), kwargs)
        if fit.single is not None:
            return binder.args([kwargs[fit.single]], {})
        keep = fit.columns
        return binder.args([], {k: v for k, v in kwargs.items() if k in keep})

    # No functools.wraps: the wrapper's own (*args, **kwargs) signature
    # keeps the worker from converting arguments before they are fitted.
    if fn.is_async:

        async def fitted_async(*args: Any, **kwargs: Any) -> Any:
            a, kw = arguments(args, kwargs)
            return await target(*a, **kw)

        return fitted_async

    def fitted(*args: Any, **kwargs: Any) -> Any:
        a, kw = arguments(args, kwargs)
        return target(*a, **kw)

    return fitted


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


@dataclass
class Manifest:
    """What a batch's rows were stored as, kept once per batch in the
    store's key/value table: key columns and their types, the columns rows
    carry, and the task names they were stored under."""

    #: Key columns, in order (empty: rows not keyed).
    key: list[str]
    #: Whether a single non-string key's JSON text was quoted.
    quoted: bool
    #: The key columns' Polars schema.
    schema: Optional[pl.Schema]
    #: Every column of the frames enqueued (empty when unknown: older stores).
    columns: list[str]
    #: The task names rows were stored under (:data:`ROWS_TASK` for rows
    #: enqueued alone); None when unknown (older stores).
    tasks: Optional[list[str]]

    def encode(self) -> bytes:
        """The manifest as stored (JSON)."""
        schema = ""
        if self.schema is not None:
            buf = io.BytesIO()
            pl.DataFrame(schema=self.schema).write_ipc(buf)
            schema = base64.b64encode(buf.getvalue()).decode()
        doc = {
            "version": 2,
            "key": self.key,
            "quoted": self.quoted,
            "schema": schema,
            "columns": self.columns,
            "tasks": self.tasks,
        }
        return b"J" + json.dumps(doc).encode()


def read_manifest(queue: Connection, batch: str) -> Optional[Manifest]:
    """The batch's manifest, or None when nothing was enqueued as a frame."""
    found = queue._store.listen_get(_MANIFEST + batch)
    if found is None:
        return None
    doc = decode(found[1], allow_pickle=False)
    raw = doc.get("schema") or ""
    schema = pl.read_ipc(io.BytesIO(base64.b64decode(raw))).schema if raw else None
    return Manifest(
        key=list(doc.get("key") or []),
        quoted=bool(doc.get("quoted")),
        schema=schema,
        columns=list(doc.get("columns") or []),
        tasks=list(doc["tasks"]) if doc.get("tasks") is not None else None,
    )


def _record_manifest(
    queue: Connection,
    batch: str,
    keys: Optional[pl.DataFrame],
    quoted: bool,
    columns: list[str],
    task_name: str,
) -> None:
    """Records (or extends) the batch's manifest; refuses other key columns
    than the batch has, and rows of another function than its own."""
    known = read_manifest(queue, batch)
    key = keys.columns if keys is not None else []
    schema = keys.schema if keys is not None else None
    if known is None:
        queue._store.listen_set(
            _MANIFEST + batch,
            Manifest(key, quoted, schema, list(columns), [task_name]).encode(),
        )
        return
    if known.key and key and (
        known.key != key or dict(known.schema or {}) != dict(schema or {})
    ):
        raise InvalidArgumentError(
            f"batch {batch!r} was enqueued with key columns {dict(known.schema or {})}, "
            f"not {dict(schema or {})}; use another batch label"
        )
    tasks = known.tasks
    if tasks is not None and task_name != ROWS_TASK:
        others = [t for t in tasks if t != ROWS_TASK and not same_function(t, task_name)]
        if others:
            raise InvalidArgumentError(
                f"batch {batch!r} holds rows for task {others[0]!r}, not {task_name!r}; "
                "use another batch label (or enqueue the rows alone, without task=)"
            )
    changed = Manifest(
        known.key or key,
        known.quoted if known.key else quoted,
        known.schema if known.key else schema,
        known.columns + [c for c in columns if c not in known.columns],
        None if tasks is None else tasks + ([task_name] if task_name not in tasks else []),
    )
    if changed != known:
        queue._store.listen_set(_MANIFEST + batch, changed.encode())


def check_function(
    queue: Connection, batch: str, fn: TaskFunction[Any, Any], *, rebind: bool = False
) -> tuple[list[str], Optional[Manifest]]:
    """The stored task names ``Queue.process(fn, batch=...)`` runs ``fn``
    for, and the batch's manifest. Rows stored for another function are an
    :class:`InvalidArgumentError` unless ``rebind``: the function given is
    the one that runs, and a run never quietly picks another."""
    manifest = read_manifest(queue, batch)
    names = [fn.name]
    if manifest is None or manifest.tasks is None:
        return names, manifest
    others = [t for t in manifest.tasks if t != ROWS_TASK and not same_function(t, fn.name)]
    if others and not rebind:
        raise InvalidArgumentError(
            f"batch {batch!r} holds rows enqueued for task {others[0]!r}, but process() was "
            f"given {fn.name!r}; pass that function, another batch=, or rebind=True to run "
            f"{fn.name!r} on these rows"
        )
    names += [t for t in manifest.tasks if t not in names]
    return names, manifest


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


def _payloads(frame: pl.DataFrame, fit: Fit) -> pl.Series:
    """Every row's stored arguments, built by Polars: ``J[[], {col: ...}]``,
    or ``J[[value], {}]`` for a one-column positional fit."""
    if fit.single is not None:
        # {"v":<json>} cut down to <json>: the value's own JSON text.
        value = pl.struct(pl.col(fit.single).alias("v")).struct.json_encode()
        value = value.str.slice(5).str.strip_suffix("}")
        parts = [pl.lit("J[["), value, pl.lit("],{}]")]
    else:
        columns = frame.columns if fit.columns is None else fit.columns
        if columns:
            parts = [pl.lit("J[[],"), pl.struct(columns).struct.json_encode(), pl.lit("]")]
        else:
            parts = [pl.lit("J[[],{}]")]
    return frame.select(pl.concat_str(parts).cast(pl.Binary)).to_series()


def enqueue_frame(
    queue: Connection,
    df: Any,
    *,
    task: Union[Callable[..., Any], str, None] = None,
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
    fn = as_task(queue, task) if task is not None else None
    frame = as_frame(df)
    if fn is None and batch is None:
        raise InvalidArgumentError("enqueue_frame without task= needs a batch= label")
    batch = batch or default_batch(queue, fn.name if fn is not None else ROWS_TASK)
    qname = queue_name or batch_queue(batch)
    d = fn.defaults if fn is not None else TaskOptions()
    retries = d.retries if retries is None else retries
    check_retries(retries)
    key_cols = [key] if isinstance(key, str) else list(key or [])
    missing = [c for c in key_cols if c not in frame.columns]
    if missing:
        raise InvalidArgumentError(f"key columns {missing} are not in the frame")
    _refuse_unsupported(frame)
    # Rows alone carry every column; process() fits them to its function.
    fit = fit_columns(fn.fn, fn.name, frame.columns, key_cols) if fn is not None else Fit(None)
    if key_cols:
        keys_df: Optional[pl.DataFrame] = frame.select(key_cols)
    elif by_position:
        keys_df = pl.DataFrame({ROW: pl.int_range(frame.height, dtype=pl.Int64, eager=True)})
    else:
        keys_df = None
    if frame.height == 0:
        return FrameSummary(batch, qname, 0, 0)

    keys: Optional[pl.Series] = None
    quoted = False
    if keys_df is not None:
        keys, quoted = _key_text(keys_df)
    task_name = fn.name if fn is not None else ROWS_TASK
    _record_manifest(queue, batch, keys_df, quoted, frame.columns, task_name)
    payload = _payloads(frame, fit)
    backoff = backoff or d.backoff
    inserted = 0
    for offset, length in _chunks(payload.bin.size()):
        ks = keys.slice(offset, length).to_list() if keys is not None else None
        _ids, flags = queue._store.enqueue_many(
            qname,
            task_name,
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


def _decode_keys(key: pl.Series, manifest: Optional[Manifest]) -> pl.DataFrame:
    if manifest is None or not manifest.key or manifest.schema is None:
        return pl.DataFrame({"key": key}) if key.null_count() < key.len() else pl.DataFrame()
    cols, quoted, schema = manifest.key, manifest.quoted, manifest.schema
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
    order: str = "id",
) -> pl.DataFrame:
    """See :meth:`Queue.results_frame`. ``order="finished"`` adds a
    ``finished_at`` column (UTC) and sorts by it: completion order."""
    if batch is None and queue_name is None:
        raise InvalidArgumentError("results_frame needs a batch (or a queue=)")
    if order not in ("id", "finished"):
        raise InvalidArgumentError(f"order must be 'id' or 'finished', got {order!r}")
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
    manifest = read_manifest(queue, batch) if batch is not None else None
    keys = _decode_keys(key_text, manifest)
    meta = meta.with_columns(_error_text())
    if model is None:
        meta = meta.with_columns(_decode_results(results))
    # A key column keeps its name; a meta column it would clash with
    # (``status``, say) is called ``task_status`` instead.
    meta = meta.rename({c: f"task_{c}" for c in meta.columns if c in keys.columns})
    out = pl.concat([ids, keys, meta] if keys.width else [ids, meta], how="horizontal")
    if order == "finished":
        out = _by_finish_time(queue, out)
    if model is None:
        return out.drop("__ferroq_pos", strict=False)
    from .frame_models import validate_results

    if order == "finished":
        results = results.gather(out["__ferroq_pos"])
    typed = validate_results(results, model)
    typed = typed.rename({c: f"result_{c}" for c in typed.columns if c in out.columns})
    return pl.concat([out.drop("__ferroq_pos", strict=False), typed], how="horizontal")


# Records read per call when finish times are fetched.
_TIMES_CHUNK = 10_000


def _by_finish_time(queue: Connection, out: pl.DataFrame) -> pl.DataFrame:
    """``out`` with a ``finished_at`` column (UTC, ms; null for rows not
    finished), sorted by it (unfinished last, then by id), and its old row
    positions in ``__ferroq_pos`` (to reorder the results to match)."""
    ids = out["task_id"].to_list()
    times: list[Optional[int]] = []
    for i in range(0, len(ids), _TIMES_CHUNK):
        times.extend(
            None if t is None else t.finished_at
            for t in queue._store.get_many(ids[i : i + _TIMES_CHUNK])
        )
    finished = pl.Series("finished_at", times, dtype=pl.Int64).cast(pl.Datetime("ms", "UTC"))
    return (
        out.with_columns(finished, pl.int_range(out.height, dtype=pl.UInt32).alias("__ferroq_pos"))
        .sort(["finished_at", "task_id"], nulls_last=True)
    )
