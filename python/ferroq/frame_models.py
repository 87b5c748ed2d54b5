"""Results validated by a Pydantic model into typed DataFrame columns.

The whole column is validated in one call (``TypeAdapter(list[Model])``
over one JSON array), and the validated models are written back out in one
call and read by Polars with column types taken from the model's fields.
Rows that fail are found from the one ``ValidationError`` (it names every
failing row), reported in a ``validation_error`` column, and left out of a
second validation of the rest; no Python loop runs over the valid rows.
"""

from __future__ import annotations

import datetime as dt
import enum
import io
import types
import typing
from typing import Any, Optional, Union

from pydantic import BaseModel, TypeAdapter, ValidationError

from ._polars import from_text, pl, read_as_text

__all__ = ["polars_dtype", "validate_results"]

_POS = "__ferroq_pos"
# ``X | None`` has its own origin from Python 3.10 on.
_UNIONS = (Union, getattr(types, "UnionType", Union))


def polars_dtype(annotation: Any) -> Optional[pl.DataType]:
    """The Polars type for a field annotation, or None to let Polars infer
    it from the JSON (an annotation with no obvious column type)."""
    simple: dict[Any, Any] = {
        int: pl.Int64,
        float: pl.Float64,
        str: pl.String,
        bool: pl.Boolean,
        dt.date: pl.Date,
        dt.time: pl.Time,
        dt.timedelta: pl.Duration("us"),
    }
    if annotation in simple:
        return simple[annotation]  # type: ignore[no-any-return]
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in _UNIONS and len(args) == 1:
        return polars_dtype(args[0])
    if origin is typing.Annotated:
        return polars_dtype(args[0])
    if origin in (list, tuple, set, frozenset) and len(args) == 1:
        inner = polars_dtype(args[0])
        return pl.List(inner) if inner is not None else None
    if origin is typing.Literal:
        kinds = {type(a) for a in args}
        return polars_dtype(kinds.pop()) if len(kinds) == 1 else None
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            kinds = {type(m.value) for m in annotation}
            return polars_dtype(kinds.pop()) if len(kinds) == 1 else None
        if issubclass(annotation, BaseModel):
            fields = {n: polars_dtype(f.annotation) for n, f in annotation.model_fields.items()}
            if any(t is None for t in fields.values()):
                return None
            return pl.Struct(fields)  # type: ignore[arg-type]
    # datetime (naive or aware: Polars reads the text), UUID, Decimal, dicts...
    return None


def _field_types(model: type[BaseModel]) -> dict[str, Optional[pl.DataType]]:
    return {name: polars_dtype(f.annotation) for name, f in model.model_fields.items()}


def _datetimes(typed: pl.DataFrame, model: type[BaseModel]) -> pl.DataFrame:
    """Datetime fields arrive as ISO text (naive or with an offset): parse
    them where the whole column agrees; otherwise the text stays."""
    for name, f in model.model_fields.items():
        ann = f.annotation
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        if ann is not dt.datetime and args != [dt.datetime]:
            continue
        if typed.schema[name] != pl.String:
            continue
        try:
            typed = typed.with_columns(pl.col(name).str.to_datetime(time_unit="us"))
        except pl.exceptions.PolarsError:
            pass
    return typed


def _row_errors(e: ValidationError) -> dict[int, str]:
    """Failing row -> its messages, from a ``list[Model]`` validation error."""
    out: dict[int, list[str]] = {}
    for err in e.errors(include_url=False):
        loc = err["loc"]
        if not loc or not isinstance(loc[0], int):
            raise e
        where = ".".join(str(p) for p in loc[1:]) or "result"
        out.setdefault(loc[0], []).append(f"{where}: {err['msg']}")
    return {i: "; ".join(msgs) for i, msgs in out.items()}


def validate_results(texts: pl.Series, model: type[Any]) -> pl.DataFrame:
    """One column per field of ``model`` (plus ``validation_error``) for
    JSON result texts; rows without a result stay null."""
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"model= needs a Pydantic model class, got {model!r}")
    types_ = _field_types(model)
    adapter: TypeAdapter[list[Any]] = TypeAdapter(list[model])  # type: ignore[valid-type]
    present = pl.DataFrame({"t": texts}).with_row_index(_POS).filter(pl.col("t").is_not_null())
    errors: dict[int, str] = {}
    good = present
    models: list[Any] = []
    for _ in range(3):  # the second pass only sees rows the first did not reject
        doc = "[" + good["t"].str.join(",").item() + "]" if good.height else "[]"
        try:
            models = adapter.validate_json(doc)
            break
        except ValidationError as e:
            bad = _row_errors(e)
            positions = good[_POS].gather(list(bad)).to_list()
            errors.update(zip(positions, bad.values()))
            good = good.filter(~pl.col(_POS).is_in(positions))
    else:  # pragma: no cover - a row failing only alongside others
        raise RuntimeError("results kept failing validation")

    known = {n: t for n, t in types_.items() if t is not None}
    as_text = {n: t for n, t in known.items() if read_as_text(t)}
    if models:
        typed = (
            pl.read_json(
                io.BytesIO(adapter.dump_json(models)),
                schema_overrides={**known, **dict.fromkeys(as_text, pl.String)},
                infer_schema_length=None,
            )
            .select(list(types_))
            .with_columns(from_text(pl.col(n), t) for n, t in as_text.items())
        )
    else:
        typed = pl.DataFrame(schema={n: t or pl.String for n, t in types_.items()})
    typed = _datetimes(typed, model).with_columns(good[_POS].alias(_POS))
    report = pl.DataFrame(
        {_POS: list(errors), "validation_error": list(errors.values())},
        schema={_POS: pl.UInt32, "validation_error": pl.String},
    )
    rows = pl.DataFrame({_POS: pl.int_range(texts.len(), dtype=pl.UInt32, eager=True)})
    return (
        rows.join(typed, on=_POS, how="left", maintain_order="left")
        .join(report, on=_POS, how="left", maintain_order="left")
        .drop(_POS)
    )
