"""weir's Python SDK: write weir plugins in Python.

A plugin is a Python module (``app.py``) built into a WebAssembly component
with ``componentize-py`` (``weir plugin build DIR`` does it). The module
defines one class named after the interface it exports, subclassing this
SDK's base for that kind and overriding ``process``:

==========  =====================  =========================================
kind        class in ``app.py``    ``process`` signature
==========  =====================  =========================================
transform   ``Transform(weir.Transformer)``  ``process(batch) -> Batch``
validate    ``Validate(weir.Validator)``     ``process(batch) -> iterable of Verdict``
extract     ``Extract(weir.Extractor)``      ``process(data, source_name, content_type) -> Batch | list[Batch]``
==========  =====================  =========================================

A :class:`Batch` is ``num_rows`` rows x ``len(schema)`` columns. Read a
column with ``batch["name"]`` as a Python list (``None`` for nulls), or rows
with ``batch.rows()`` as dicts. Values are ``bool``, ``int`` (int64),
``float`` (float64), ``str`` (utf8), ``bytes`` (binary), ``int``
microseconds since the Unix epoch (timestamp) and ``int`` days since
1970-01-01 (date32). Columns a plugin does not touch cross back to the host
without being converted to Python objects.

Raise :class:`InvalidConfig`, :class:`InvalidInput` or :class:`ParseError`
to reject a batch on purpose; any other exception is returned to the host
as an ``internal`` plugin error carrying the exception's type, message and
the line it came from. Either way the host quarantines the batch's rows with
that message and carries on.

Columnar work is fastest on the host: ``batch.col("arr_delay") > 60`` is a
:class:`Col`, a handle on a column the host keeps, and operators and
methods on it run as Arrow kernels on the host instead of a Python loop
(see :class:`Col`). ``batch.with_column(name, col)`` adds a kernel column
without it crossing into Python, ``batch.filter(mask)`` takes a boolean
``Col``, and a validator fails rows with :func:`reject`.

The stage's ``[stages.config]`` table is :func:`config` (a dict); log lines
go to the host's log with :func:`log` (or :func:`info`, :func:`warn`...).
"""

from __future__ import annotations

import datetime as _dt
import itertools as _itertools
import json as _json
import traceback as _traceback
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence, Union

from componentize_py_types import Err as _Err
from wit_world.imports import host as _host
try:
    # The transform and validate worlds use `stage`; the extract world does not.
    from wit_world.imports import stage as _stage
except ImportError:
    _stage = None
from wit_world.imports import types as _wit

try:
    # Only the stateful worlds (`state = true` in weir-plugin.toml) import it.
    from wit_world.imports import state as _wit_state
except ImportError:
    _wit_state = None
try:
    # The transform and validate worlds import the host's compute kernels.
    from wit_world.imports import compute as _compute
except ImportError:
    _compute = None

__all__ = [
    "state",
    "BINARY",
    "BOOLEAN",
    "DATE32",
    "FLOAT64",
    "INT64",
    "TIMESTAMP",
    "UTF8",
    "Batch",
    "Col",
    "DataType",
    "Extractor",
    "Field",
    "Internal",
    "InvalidConfig",
    "InvalidInput",
    "ParseError",
    "PluginError",
    "Transformer",
    "Validator",
    "Verdict",
    "col",
    "config",
    "debug",
    "error",
    "if_else",
    "info",
    "lit",
    "log",
    "reject",
    "timestamp",
    "warn",
]

# --------------------------------------------------------------------------
# Types and schemas


@dataclass(frozen=True)
class DataType:
    """A column's logical type, one of the WIT ``data-type`` cases.

    ``kind`` is ``"boolean"``, ``"int64"``, ``"float64"``, ``"utf8"``,
    ``"binary"``, ``"timestamp"`` or ``"date32"``; ``timezone`` is set only
    for a zoned timestamp (an IANA name or an offset such as ``"+02:00"``).
    """

    kind: str
    timezone: Optional[str] = None

    def __str__(self) -> str:
        if self.kind == "timestamp" and self.timezone is not None:
            return f"timestamp({self.timezone})"
        return self.kind


BOOLEAN = DataType("boolean")
INT64 = DataType("int64")
FLOAT64 = DataType("float64")
UTF8 = DataType("utf8")
BINARY = DataType("binary")
#: Microseconds since the Unix epoch, without a time zone.
TIMESTAMP = DataType("timestamp")
#: Days since 1970-01-01.
DATE32 = DataType("date32")


def timestamp(timezone: Optional[str] = None) -> DataType:
    """A timestamp type (microseconds since the Unix epoch) in ``timezone``."""
    return DataType("timestamp", timezone)


@dataclass(frozen=True)
class Field:
    """One column of a schema: its name, type and whether it may hold nulls."""

    name: str
    type: DataType
    nullable: bool = True


_SIMPLE_TYPES = {
    _wit.DataType_Boolean: BOOLEAN,
    _wit.DataType_Int64: INT64,
    _wit.DataType_Float64: FLOAT64,
    _wit.DataType_Utf8: UTF8,
    _wit.DataType_Binary: BINARY,
    _wit.DataType_Date32: DATE32,
}


def _type_from_wit(data_type: Any) -> DataType:
    if isinstance(data_type, _wit.DataType_Timestamp):
        return timestamp(data_type.value)
    return _SIMPLE_TYPES[type(data_type)]


def _type_to_wit(data_type: DataType) -> Any:
    kind = data_type.kind
    if kind == "timestamp":
        return _wit.DataType_Timestamp(data_type.timezone)
    for wit_class, simple in _SIMPLE_TYPES.items():
        if simple.kind == kind:
            return wit_class()
    raise TypeError(f"unknown data type {data_type!r}")


def _infer_type(name: str, values: Sequence[Any]) -> DataType:
    for value in values:
        if value is None:
            continue
        # bool before int: bool is a subclass of int.
        if isinstance(value, bool):
            return BOOLEAN
        if isinstance(value, int):
            return INT64
        if isinstance(value, float):
            return FLOAT64
        if isinstance(value, str):
            return UTF8
        if isinstance(value, (bytes, bytearray, memoryview)):
            return BINARY
        if isinstance(value, _dt.datetime):
            return timestamp("UTC" if value.tzinfo is not None else None)
        if isinstance(value, _dt.date):
            return DATE32
        raise TypeError(f"column {name!r}: cannot store a {type(value).__name__} value")
    raise TypeError(f"column {name!r}: every value is None, so its type must be given")


# --------------------------------------------------------------------------
# Column conversion between the WIT form and Python lists


def _bit(bitmap: bytes, i: int) -> bool:
    return bool((bitmap[i >> 3] >> (i & 7)) & 1)


def _var_len(var_len: Any, num_rows: int, text: bool) -> list:
    offsets, data = var_len.offsets, var_len.data
    if text:
        decoded = data.decode()
        if len(decoded) == len(data):
            # Pure ASCII: byte offsets are character offsets.
            return [decoded[offsets[i] : offsets[i + 1]] for i in range(num_rows)]
        return [data[offsets[i] : offsets[i + 1]].decode() for i in range(num_rows)]
    return [bytes(data[offsets[i] : offsets[i + 1]]) for i in range(num_rows)]


def _decode(column: Any, num_rows: int) -> list:
    """A WIT column as a Python list of ``num_rows`` values, ``None`` for nulls."""
    values = column.values
    if isinstance(values, _wit.ColumnValues_Utf8):
        out = _var_len(values.value, num_rows, text=True)
    elif isinstance(values, _wit.ColumnValues_Binary):
        out = _var_len(values.value, num_rows, text=False)
    elif isinstance(values, _wit.ColumnValues_Boolean):
        bits = values.value
        out = [_bit(bits, i) for i in range(num_rows)]
    else:
        out = list(values.value)
    validity = column.validity
    if validity is not None:
        out = [value if (validity[i >> 3] >> (i & 7)) & 1 else None for i, value in enumerate(out)]
    return out


_EPOCH_DATE = _dt.date(1970, 1, 1)
_EPOCH_UTC = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_EPOCH_NAIVE = _dt.datetime(1970, 1, 1)


def _to_micros(value: Any) -> int:
    if isinstance(value, _dt.datetime):
        epoch = _EPOCH_UTC if value.tzinfo is not None else _EPOCH_NAIVE
        delta = value - epoch
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return value


def _to_days(value: Any) -> int:
    if isinstance(value, _dt.datetime):
        value = value.date()
    if isinstance(value, _dt.date):
        return (value - _EPOCH_DATE).days
    return value


# Python types accepted for each kind, and the filler stored in null slots.
_ACCEPTS = {
    "boolean": ((bool,), False),
    "int64": ((int,), 0),
    "float64": ((float, int), 0.0),
    "utf8": ((str,), ""),
    "binary": ((bytes, bytearray, memoryview), b""),
    "timestamp": ((int, _dt.datetime), 0),
    "date32": ((int, _dt.date), 0),
}

_INT64_RANGE = (-(2**63), 2**63 - 1)
_MAX_VAR_LEN_BYTES = 2**31 - 1


def _encode(name: str, data_type: DataType, values: Sequence[Any]) -> Any:
    """A Python list as a WIT column of ``data_type``.

    Raises ``TypeError`` naming the column and row for a value of the wrong
    type, and ``ValueError`` for an int64 out of range.
    """
    kind = data_type.kind
    accepted, filler = _ACCEPTS[kind]
    validity = None
    if any(value is None for value in values):
        bitmap = bytearray((len(values) + 7) // 8)
        for i, value in enumerate(values):
            if value is not None:
                bitmap[i >> 3] |= 1 << (i & 7)
        validity = bytes(bitmap)
        values = [filler if value is None else value for value in values]
    for i, value in enumerate(values):
        # bool is an int subclass: only a boolean column takes it.
        if not isinstance(value, accepted) or (kind != "boolean" and isinstance(value, bool)):
            raise TypeError(
                f"column {name!r} is {data_type} but row {i} holds {type(value).__name__} {value!r}"
            )
    if kind in ("utf8", "binary"):
        parts = [value.encode() for value in values] if kind == "utf8" else [bytes(v) for v in values]
        data = b"".join(parts)
        if len(data) > _MAX_VAR_LEN_BYTES:
            raise ValueError(f"column {name!r} holds {len(data)} bytes, over 2^31 - 1")
        offsets = [0, *_itertools.accumulate(len(part) for part in parts)]
        var_len = _wit.VarLen(offsets, data)
        wit_values = _wit.ColumnValues_Utf8(var_len) if kind == "utf8" else _wit.ColumnValues_Binary(var_len)
    elif kind == "boolean":
        bitmap = bytearray((len(values) + 7) // 8)
        for i, value in enumerate(values):
            if value:
                bitmap[i >> 3] |= 1 << (i & 7)
        wit_values = _wit.ColumnValues_Boolean(bytes(bitmap))
    elif kind == "int64":
        low, high = _INT64_RANGE
        for i, value in enumerate(values):
            if not low <= value <= high:
                raise ValueError(f"column {name!r} row {i}: {value} does not fit in int64")
        wit_values = _wit.ColumnValues_Int64(list(values))
    elif kind == "float64":
        wit_values = _wit.ColumnValues_Float64([float(value) for value in values])
    elif kind == "timestamp":
        wit_values = _wit.ColumnValues_Timestamp([_to_micros(value) for value in values])
    else:
        wit_values = _wit.ColumnValues_Date32([_to_days(value) for value in values])
    return _wit.Column(validity, wit_values)


# --------------------------------------------------------------------------
# Record batches


class _Input:
    """The batch a plugin was given: what its output is compared with to
    send back only the changes (a splice)."""

    __slots__ = ("num_rows", "fields", "columns", "position")

    def __init__(self, fields: list, columns: list, num_rows: int):
        self.num_rows = num_rows
        self.fields = fields
        # Keeps the WIT columns alive, so their ids stay theirs.
        self.columns = columns
        self.position = {field.name: i for i, field in enumerate(fields)}


class Batch:
    """A record batch: ``num_rows`` rows x ``len(schema)`` columns.

    Batches are immutable: :meth:`with_column`, :meth:`select`,
    :meth:`filter` and friends return a new batch. A column is converted to
    a Python list the first time it is read, and a column never changed
    stays on the host: a batch derived from the input goes back as a splice
    (the row selection plus only the columns added or replaced).
    """

    __slots__ = ("_fields", "_columns", "_num_rows", "_index", "_input", "_rows", "_cache")

    def __init__(
        self,
        fields: Sequence[Field],
        columns: Sequence[Any],
        num_rows: int,
        _input: Optional[_Input] = None,
        _rows: Optional[list] = None,
        _cache: Optional[dict] = None,
    ):
        # Each column is either a Python list (in this batch's rows) or an
        # untouched WIT column of the input (in the input's rows; `_rows`
        # maps this batch's rows to them).
        self._fields = list(fields)
        self._columns = list(columns)
        self._num_rows = num_rows
        self._input = _input
        self._rows = _rows
        # Decoded WIT columns, by id, shared by batches with the same rows.
        self._cache = {} if _cache is None else _cache
        self._index = {field.name: i for i, field in enumerate(self._fields)}
        if len(self._index) != len(self._fields):
            raise ValueError(f"duplicate column names in {[f.name for f in self._fields]}")
        for field, column in zip(self._fields, self._columns):
            if isinstance(column, list) and len(column) != num_rows:
                raise ValueError(
                    f"column {field.name!r} has {len(column)} values, the batch has {num_rows} rows"
                )

    # -- building ----------------------------------------------------------

    @classmethod
    def from_columns(
        cls,
        columns: Mapping[str, Sequence[Any]],
        types: Optional[Mapping[str, Union[DataType, Field]]] = None,
    ) -> "Batch":
        """A batch from ``{name: values}``, in the mapping's order.

        Each column's type comes from ``types`` when given there (a
        :class:`DataType`, or a :class:`Field` to also keep its
        nullability), else from its first non-null value (``bool`` → boolean, ``int`` → int64,
        ``float`` → float64, ``str`` → utf8, ``bytes`` → binary,
        ``datetime`` → timestamp, ``date`` → date32). Every column must have
        the same length.
        """
        types = dict(types or {})
        fields, lists = [], []
        lengths = {len(values) for values in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns have different lengths: {sorted(lengths)}")
        for name, values in columns.items():
            values = list(values)
            given = types.get(name)
            if isinstance(given, Field):
                fields.append(Field(name, given.type, given.nullable))
            else:
                fields.append(Field(name, given or _infer_type(name, values), True))
            lists.append(values)
        return cls(fields, lists, lengths.pop() if lengths else 0)

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Mapping[str, Any]],
        types: Optional[Mapping[str, Union[DataType, Field]]] = None,
    ) -> "Batch":
        """A batch from dicts, one per row. Columns are the union of the
        rows' keys in first-seen order, and a key a row lacks is null there.
        Types as in :meth:`from_columns`."""
        rows = list(rows)
        names: dict = {}
        for row in rows:
            for key in row:
                names.setdefault(key, None)
        if types:
            for key in types:
                names.setdefault(key, None)
        return cls.from_columns({name: [row.get(name) for row in rows] for name in names}, types)

    @classmethod
    def _from_wit(cls, batch: Any) -> "Batch":
        fields = [Field(f.name, _type_from_wit(f.data_type), f.nullable) for f in batch.schema.fields]
        columns = list(batch.columns)
        return cls(fields, columns, batch.num_rows, _Input(fields, columns, batch.num_rows))

    def _derive(self, fields: list, columns: list) -> "Batch":
        """A batch with the same rows (and origin) as this one."""
        return Batch(fields, columns, self._num_rows, self._input, self._rows, self._cache)

    def _to_wit(self) -> Any:
        fields, columns = [], []
        for field, column in zip(self._fields, self._columns):
            if isinstance(column, Col) or (not isinstance(column, list) and self._rows is not None):
                column = self.column(field.name)
            if isinstance(column, list):
                column = _encode(field.name, field.type, column)
                nullable = field.nullable or column.validity is not None
            else:
                nullable = field.nullable
            fields.append(_wit.Field(field.name, _type_to_wit(field.type), nullable))
            columns.append(column)
        return _wit.RecordBatch(_wit.Schema(fields), self._num_rows, columns)

    def _to_splice(self) -> Any:
        """This batch as changes to the input it derives from (see the WIT
        ``splice``), or ``None`` when a splice cannot say it: a batch not
        derived from the input, columns of the input reordered or placed
        after new ones, or rows repeated while columns were computed."""
        source = self._input
        if source is None:
            return None
        repeated = self._rows is not None and len(set(self._rows)) != len(self._rows)
        last, appended, changed = -1, False, []
        for field, column in zip(self._fields, self._columns):
            position = source.position.get(field.name)
            if position is None:
                appended = True
            elif appended or position <= last:
                return None
            else:
                last = position
                if column is source.columns[position] and field == source.fields[position]:
                    continue
            if isinstance(column, list) and repeated:
                return None
            changed.append((field, column))
        new_columns, computed = [], []
        for field, column in changed:
            if isinstance(column, Col):
                # Kernel columns hold the input's rows and stay on the host.
                computed.append((field.name, column))
                continue
            if isinstance(column, list):
                if self._rows is not None:
                    # Computed on the selected rows: spread onto the input's
                    # rows (the others are not selected, any value does).
                    spread = [None if field.nullable else _ACCEPTS[field.type.kind][1]] * source.num_rows
                    for value, row in zip(column, self._rows):
                        spread[row] = value
                    column = spread
                column = _encode(field.name, field.type, column)
            nullable = field.nullable or column.validity is not None
            wit_field = _wit.Field(field.name, _type_to_wit(field.type), nullable)
            new_columns.append(_stage.NewColumn(wit_field, column))
        drop = [field.name for field in source.fields if field.name not in self._index]
        selection = None if self._rows is None else _stage.Selection_Indices(list(self._rows))
        for name, column in computed:
            _kernel(_compute.emit, name, column._handle)
        return _stage.Splice(selection, new_columns, drop)

    # -- reading -----------------------------------------------------------

    @property
    def num_rows(self) -> int:
        """Number of rows."""
        return self._num_rows

    def __len__(self) -> int:
        return self._num_rows

    @property
    def schema(self) -> list:
        """The fields, in column order."""
        return list(self._fields)

    @property
    def column_names(self) -> list:
        """Column names, in order."""
        return [field.name for field in self._fields]

    def __contains__(self, name: str) -> bool:
        return name in self._index

    def field(self, name: str) -> Field:
        """The field called ``name``; raises :class:`InvalidInput` if absent."""
        return self._fields[self._position(name)]

    def column(self, name: str) -> list:
        """Column ``name`` as a list of ``num_rows`` values, ``None`` for nulls.

        Raises :class:`InvalidInput` naming the column when it is absent.
        """
        i = self._position(name)
        column = self._columns[i]
        if isinstance(column, list):
            return column
        if isinstance(column, Col):
            # Read once; a kernel column has the input's rows (or is a scalar).
            values = self._cache.get(("col", column._handle))
            if values is None:
                info = _kernel(_compute.info, column._handle)
                full = _decode(column._read(), info.len)
                if info.is_scalar:
                    values = full * self._num_rows
                else:
                    values = full if self._rows is None else [full[row] for row in self._rows]
                self._cache[("col", column._handle)] = values
            return values
        values = self._cache.get(id(column))
        if values is None:
            if self._rows is None:
                values = _decode(column, self._num_rows)
            else:
                full = _decode(column, self._input.num_rows)
                values = [full[row] for row in self._rows]
            self._cache[id(column)] = values
        return values

    __getitem__ = column

    def col(self, name: str) -> Col:
        """Column ``name`` as a :class:`Col`, for kernels on the host. A
        name this batch does not have (a column the stage does not read,
        so it was not sent) is looked up in the input batch on the host.

        Raises :class:`InvalidInput` when neither has it, and
        ``ValueError`` for a Python-list column of a filtered batch
        (kernel columns have the input's rows)."""
        if name not in self._index:
            return Col(_kernel(_compute.input, name))
        field = self._fields[self._index[name]]
        column = self._columns[self._index[name]]
        if isinstance(column, Col):
            return column
        if isinstance(column, list):
            if self._rows is not None:
                raise ValueError(f"column {name!r} was computed on filtered rows; kernels need the input's rows")
            return Col(_kernel(_compute.from_column, _encode(name, field.type, column)))
        source = self._input
        for original_field, original in zip(source.fields, source.columns):
            if original is column:
                return Col(_kernel(_compute.input, original_field.name))
        raise ValueError(f"column {name!r} is not one of the input's")

    def rows(self) -> Iterator[dict]:
        """The rows, each a dict from column name to value."""
        names = self.column_names
        columns = [self.column(name) for name in names]
        for values in zip(*columns):
            yield dict(zip(names, values))

    def to_pydict(self) -> dict:
        """``{name: list of values}`` for every column."""
        return {name: self.column(name) for name in self.column_names}

    # -- deriving ----------------------------------------------------------

    def with_column(
        self,
        name: str,
        values: Union[Sequence[Any], Col],
        type: Optional[DataType] = None,
        nullable: Optional[bool] = None,
    ) -> "Batch":
        """This batch with column ``name`` set to ``values``: replaced in
        place when it exists, else appended. The type is ``type``, else the
        existing column's, else inferred as in :meth:`from_columns`;
        ``nullable`` defaults to the existing column's, else true (a
        column holding a null is always sent as nullable).

        ``values`` may be a :class:`Col` (kernel results, with the input's
        rows): it then stays on the host, its type is its own, and the host
        applies this batch's row selection to it."""
        existing = self._fields[self._index[name]] if name in self._index else None
        if isinstance(values, Col):
            type = values.type
        else:
            values = list(values)
        if type is None:
            type = existing.type if existing else _infer_type(name, values)
        if nullable is None:
            nullable = existing.nullable if existing else True
        field = Field(name, type, nullable)
        fields, columns = list(self._fields), list(self._columns)
        if name in self._index:
            fields[self._index[name]] = field
            columns[self._index[name]] = values
        else:
            fields.append(field)
            columns.append(values)
        return self._derive(fields, columns)

    def select(self, names: Iterable[str]) -> "Batch":
        """Only the columns ``names``, in that order."""
        positions = [self._position(name) for name in names]
        return self._derive([self._fields[i] for i in positions], [self._columns[i] for i in positions])

    def drop(self, names: Iterable[str]) -> "Batch":
        """Every column but ``names`` (absent names are ignored)."""
        dropped = set(names)
        keep = [i for i, field in enumerate(self._fields) if field.name not in dropped]
        return self._derive([self._fields[i] for i in keep], [self._columns[i] for i in keep])

    def rename(self, mapping: Mapping[str, str]) -> "Batch":
        """Columns renamed by ``{old: new}``."""
        for old in mapping:
            self._position(old)
        fields = [Field(mapping.get(f.name, f.name), f.type, f.nullable) for f in self._fields]
        return self._derive(fields, list(self._columns))

    def take(self, indices: Sequence[int]) -> "Batch":
        """The rows at ``indices``, in that order (repeats allowed)."""
        indices = list(indices)
        for i in indices:
            if not 0 <= i < self._num_rows:
                raise IndexError(f"row {i} is outside the batch's {self._num_rows} rows")
        # Untouched input columns are not copied: the host selects them.
        columns = [column if not isinstance(column, list) else [column[i] for i in indices] for column in self._columns]
        if self._input is None:
            return Batch(self._fields, columns, len(indices))
        rows = indices if self._rows is None else [self._rows[i] for i in indices]
        return Batch(self._fields, columns, len(indices), self._input, rows)

    def filter(self, keep: Union[Sequence[bool], Callable[[dict], bool], Col]) -> "Batch":
        """The rows where ``keep`` is true: a list of ``num_rows`` booleans,
        a function of the row dict, or a boolean :class:`Col` over the
        input's rows (null counts as false; no value crosses per row but
        the kept rows' indices)."""
        if isinstance(keep, Col):
            chosen = _kernel(_compute.selected, keep._handle)
            if self._rows is None:
                return self.take(chosen)
            wanted = set(chosen)
            return self.take([i for i, row in enumerate(self._rows) if row in wanted])
        if callable(keep):
            mask = [bool(keep(row)) for row in self.rows()]
        else:
            mask = list(keep)
        if len(mask) != self._num_rows:
            raise ValueError(f"filter mask has {len(mask)} entries, the batch has {self._num_rows} rows")
        return self.take([i for i, flag in enumerate(mask) if flag])

    def _position(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise InvalidInput(f"no column {name!r}; the batch has {self.column_names}") from None

    def __repr__(self) -> str:
        columns = ", ".join(f"{f.name}: {f.type}" for f in self._fields)
        return f"Batch({self._num_rows} rows; {columns})"


# --------------------------------------------------------------------------
# Compute kernels on the host


def _kernel(call: Callable[..., Any], *args: Any) -> Any:
    """Calls a ``compute`` function; its error becomes :class:`InvalidInput`."""
    if _compute is None:
        raise RuntimeError("compute kernels are available to transform and validate plugins only")
    try:
        return call(*args)
    except _Err as failure:
        raise InvalidInput(getattr(failure.value, "value", str(failure.value))) from None


def _scalar(value: Any) -> Any:
    if value is None:
        return _compute.Scalar_Null()
    if isinstance(value, bool):
        return _compute.Scalar_Boolean(value)
    if isinstance(value, int):
        return _compute.Scalar_Int64(value)
    if isinstance(value, float):
        return _compute.Scalar_Float64(value)
    if isinstance(value, str):
        return _compute.Scalar_Utf8(value)
    if isinstance(value, (bytes, bytearray)):
        return _compute.Scalar_Binary(bytes(value))
    raise TypeError(f"no scalar for a {type(value).__name__}: use bool, int, float, str, bytes or None")


class Col:
    """A column (or scalar) the host keeps for the running call.

    Get one with :meth:`Batch.col` (any column of the input batch, even
    one :meth:`Transformer.reads` does not list) or :func:`lit`. Operators
    and methods run as Arrow kernels on the host and return a new ``Col``;
    nothing crosses into Python until :meth:`to_list`. Plain values
    (``int``, ``float``, ``str``, ``bool``, ``bytes``, ``None``) mix in
    as scalars::

        late = batch.col("arr_delay") > 60             # boolean Col
        gain = batch.col("dep_delay") - batch.col("arr_delay")
        both = late & ~batch.col("tailnum").is_null()

    Comparisons give booleans (null where an operand is null); ``&``,
    ``|``, ``^`` and ``~`` are Kleene logic on booleans (Python's ``and``,
    ``or`` and ``not`` cannot be overloaded and raise ``TypeError``).
    int64 and float64 mix as float64; int64 overflow and division by zero
    raise :class:`InvalidInput`, as does any type a kernel does not take.
    A ``Col`` is valid until ``process`` returns.
    """

    __slots__ = ("_handle",)
    __hash__ = None  # == builds a column, so a Col cannot be a dict key

    def __init__(self, handle: int):
        self._handle = handle

    @staticmethod
    def _of(value: Any) -> "Col":
        return value if isinstance(value, Col) else lit(value)

    def _compare(self, op: Any, other: Any) -> "Col":
        return Col(_kernel(_compute.compare, self._handle, op, Col._of(other)._handle))

    def _arith(self, op: Any, a: Any, b: Any) -> "Col":
        return Col(_kernel(_compute.arith, Col._of(a)._handle, op, Col._of(b)._handle))

    def _logic(self, op: Any, a: Any, b: Any) -> "Col":
        return Col(_kernel(_compute.logic, Col._of(a)._handle, op, Col._of(b)._handle))

    def __eq__(self, other: Any) -> "Col":  # type: ignore[override]
        return self._compare(_compute.CmpOp.EQ, other)

    def __ne__(self, other: Any) -> "Col":  # type: ignore[override]
        return self._compare(_compute.CmpOp.NE, other)

    def __lt__(self, other: Any) -> "Col":
        return self._compare(_compute.CmpOp.LT, other)

    def __le__(self, other: Any) -> "Col":
        return self._compare(_compute.CmpOp.LE, other)

    def __gt__(self, other: Any) -> "Col":
        return self._compare(_compute.CmpOp.GT, other)

    def __ge__(self, other: Any) -> "Col":
        return self._compare(_compute.CmpOp.GE, other)

    def __add__(self, other: Any) -> "Col":
        return self._arith(_compute.ArithOp.ADD, self, other)

    def __radd__(self, other: Any) -> "Col":
        return self._arith(_compute.ArithOp.ADD, other, self)

    def __sub__(self, other: Any) -> "Col":
        return self._arith(_compute.ArithOp.SUB, self, other)

    def __rsub__(self, other: Any) -> "Col":
        return self._arith(_compute.ArithOp.SUB, other, self)

    def __mul__(self, other: Any) -> "Col":
        return self._arith(_compute.ArithOp.MUL, self, other)

    def __rmul__(self, other: Any) -> "Col":
        return self._arith(_compute.ArithOp.MUL, other, self)

    def __truediv__(self, other: Any) -> "Col":
        return self._arith(_compute.ArithOp.DIV, self, other)

    def __rtruediv__(self, other: Any) -> "Col":
        return self._arith(_compute.ArithOp.DIV, other, self)

    def __mod__(self, other: Any) -> "Col":
        return self._arith(_compute.ArithOp.REM, self, other)

    def __rmod__(self, other: Any) -> "Col":
        return self._arith(_compute.ArithOp.REM, other, self)

    def __and__(self, other: Any) -> "Col":
        return self._logic(_compute.BoolOp.AND, self, other)

    def __rand__(self, other: Any) -> "Col":
        return self._logic(_compute.BoolOp.AND, other, self)

    def __or__(self, other: Any) -> "Col":
        return self._logic(_compute.BoolOp.OR, self, other)

    def __ror__(self, other: Any) -> "Col":
        return self._logic(_compute.BoolOp.OR, other, self)

    def __xor__(self, other: Any) -> "Col":
        return self._logic(_compute.BoolOp.XOR, self, other)

    def __invert__(self) -> "Col":
        return Col(_kernel(_compute.invert, self._handle))

    def __bool__(self) -> bool:
        raise TypeError("a Col has no single truth value: combine masks with &, | and ~, not and/or/not")

    def is_null(self) -> "Col":
        """Boolean: whether each value is null (never null itself)."""
        return Col(_kernel(_compute.is_null, self._handle))

    def fill_null(self, value: Any) -> "Col":
        """This column with nulls replaced by ``value`` (a scalar or a Col)."""
        return Col(_kernel(_compute.fill_null, self._handle, Col._of(value)._handle))

    def cast(self, type: DataType) -> "Col":
        """Converted to ``type`` with Arrow's cast rules; a value that does
        not convert raises :class:`InvalidInput`."""
        return Col(_kernel(_compute.cast, self._handle, _type_to_wit(type)))

    def lower(self) -> "Col":
        """utf8, lowercased (Unicode)."""
        return Col(_kernel(_compute.text, self._handle, _compute.TextOp.LOWERCASE))

    def upper(self) -> "Col":
        """utf8, uppercased (Unicode)."""
        return Col(_kernel(_compute.text, self._handle, _compute.TextOp.UPPERCASE))

    def strip(self) -> "Col":
        """utf8 without white space at both ends."""
        return Col(_kernel(_compute.text, self._handle, _compute.TextOp.TRIM))

    def str_len(self) -> "Col":
        """int64: each utf8 value's length in characters."""
        return Col(_kernel(_compute.text, self._handle, _compute.TextOp.LENGTH))

    def contains(self, text: str) -> "Col":
        """Boolean: whether each utf8 value contains ``text``."""
        return Col(_kernel(_compute.matches, self._handle, _compute.MatchOp.CONTAINS, text))

    def startswith(self, text: str) -> "Col":
        """Boolean: whether each utf8 value starts with ``text``."""
        return Col(_kernel(_compute.matches, self._handle, _compute.MatchOp.STARTS_WITH, text))

    def endswith(self, text: str) -> "Col":
        """Boolean: whether each utf8 value ends with ``text``."""
        return Col(_kernel(_compute.matches, self._handle, _compute.MatchOp.ENDS_WITH, text))

    def matches(self, pattern: str) -> "Col":
        """Boolean: whether each utf8 value matches the regex ``pattern``
        (Rust ``regex`` syntax, unanchored)."""
        return Col(_kernel(_compute.matches, self._handle, _compute.MatchOp.REGEX, pattern))

    def sha256(self, salt: Union[str, bytes] = b"") -> "Col":
        """binary: the SHA-256 of ``salt`` followed by each value (utf8,
        binary, or int64 as decimal text)."""
        return Col(_kernel(_compute.hash, self._handle, _compute.HashOp.SHA256, _key_bytes(salt)))

    def sha256_hex(self, salt: Union[str, bytes] = b"") -> "Col":
        """utf8: :meth:`sha256` as 64 lowercase hex characters."""
        return Col(_kernel(_compute.hash, self._handle, _compute.HashOp.SHA256_HEX, _key_bytes(salt)))

    def bucket(self, breaks: Sequence[float]) -> "Col":
        """int64: for each number ``v`` the first ``i`` with
        ``v <= breaks[i]`` (``breaks`` ascending), else ``len(breaks)``."""
        return Col(_kernel(_compute.bucket, self._handle, [float(b) for b in breaks]))

    def lookup(self, labels: Sequence[str]) -> "Col":
        """utf8: ``labels[i]`` for each int64 ``i``; null when out of range."""
        return Col(_kernel(_compute.lookup, self._handle, [str(label) for label in labels]))

    @property
    def type(self) -> DataType:
        """The values' type."""
        return _type_from_wit(_kernel(_compute.info, self._handle).data_type)

    def __len__(self) -> int:
        return _kernel(_compute.info, self._handle).len

    @property
    def null_count(self) -> int:
        """How many values are null."""
        return _kernel(_compute.info, self._handle).null_count

    def _read(self) -> Any:
        return _kernel(_compute.read, self._handle)

    def to_list(self) -> list:
        """The values as a Python list (``None`` for nulls): the one step
        that copies them into Python."""
        return _decode(self._read(), len(self))

    def __repr__(self) -> str:
        info = _kernel(_compute.info, self._handle)
        shape = "scalar" if info.is_scalar else f"{info.len} values"
        return f"Col({_type_from_wit(info.data_type)}, {shape})"


def lit(value: Any) -> Col:
    """A scalar ``Col`` (broadcast against columns); ``None`` is a null
    that takes the other operand's type."""
    return Col(_kernel(_compute.literal, _scalar(value)))


def if_else(mask: Col, when_true: Any, when_false: Any) -> Col:
    """``when_true`` where the boolean ``mask`` is true, else ``when_false``
    (a null mask picks ``when_false``); each a Col or a scalar."""
    return Col(
        _kernel(_compute.if_else, mask._handle, Col._of(when_true)._handle, Col._of(when_false)._handle)
    )


def reject(mask: Col, rule: str, message: str) -> None:
    """In a validator: fails ``rule`` with ``message`` on every row where
    the boolean ``mask`` is true (a null passes). The rows join the
    verdicts ``process`` returns, without a verdict crossing per row."""
    _kernel(_compute.reject, mask._handle, rule, message)


def reject_each(mask: Col, rule: str, prefix: str, values: Any, suffix: str) -> None:
    """In a validator: fails ``rule`` on every row where the boolean
    ``mask`` is true (a null passes), each with its own message:
    ``prefix``, the row's value of ``values`` (a Col or a scalar) as text,
    then ``suffix``. The host writes the text (an int64's digits, a
    float64's shortest digits, a string as it is, ``true``/``false``,
    ``null``), so no string is built in Python per failing row."""
    _kernel(_compute.reject_each, mask._handle, rule, prefix, Col._of(values)._handle, suffix)


# --------------------------------------------------------------------------
# Errors


class PluginError(Exception):
    """An error returned to the host on purpose; its rows are quarantined
    with this kind and message."""

    _case: Callable[[str], Any] = _wit.Error_Internal


class InvalidConfig(PluginError):
    """The stage's configuration is unusable; name the key."""

    _case = _wit.Error_InvalidConfig


class InvalidInput(PluginError):
    """The batch lacks what the plugin needs; name the column."""

    _case = _wit.Error_InvalidInput


class ParseError(PluginError):
    """The bytes given to an extractor could not be parsed; say where."""

    _case = _wit.Error_Parse


class Internal(PluginError):
    """Anything else that went wrong."""

    _case = _wit.Error_Internal


def _describe(exception: BaseException) -> str:
    """``Type: message (at file:line in function)``, from the innermost frame."""
    text = "".join(_traceback.format_exception_only(type(exception), exception)).strip()
    frames = _traceback.extract_tb(exception.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name})"
    return text


def _guarded(call: Callable[[], Any]) -> Any:
    """Runs ``call``, turning any exception into the WIT ``error`` result."""
    try:
        return call()
    except _Err:
        raise
    except PluginError as exception:
        raise _Err(type(exception)._case(str(exception))) from None
    except Exception as exception:  # noqa: BLE001 - every failure must reach the host as text
        raise _Err(_wit.Error_Internal(_describe(exception))) from None


# --------------------------------------------------------------------------
# Plugin kinds


_describe_error: Optional[BaseException] = None


def _stage_info(reads: Callable[[], Optional[Iterable[str]]]) -> Any:
    """``describe``'s answer; an exception from ``reads`` is kept and
    raised on every batch (``describe`` itself cannot fail)."""
    global _describe_error
    try:
        names = reads()
        return _stage.StageInfo(None if names is None else [str(n) for n in names])
    except Exception as exception:  # noqa: BLE001 - reported on each batch instead
        _describe_error = exception
        return _stage.StageInfo(None)


def _check_describe() -> None:
    if _describe_error is not None:
        raise _describe_error


class Transformer:
    """Base of a transform plugin: subclass it as ``Transform`` in
    ``app.py`` and override :meth:`process` (and :meth:`reads`, to receive
    only the columns it needs)."""

    def reads(self) -> Optional[Iterable[str]]:
        """Names of the columns :meth:`process` reads; only those are sent
        (the others stay on the host and pass through). Called once, before
        any batch; may use :func:`config`. ``None`` (the default) sends
        every column."""
        return None

    def process(self, batch: Batch) -> Batch:
        """Returns the transformed batch (any rows, any schema). Rows left
        out are counted as filtered, not quarantined. A batch derived from
        ``batch`` (with :meth:`Batch.with_column`, :meth:`Batch.filter`,
        :meth:`Batch.drop`...) goes back as a splice of just its changes,
        and the columns that were not sent are kept; a batch built from
        scratch replaces the whole batch, unsent columns included."""
        raise NotImplementedError("override Transformer.process")

    def describe(self) -> Any:
        return _stage_info(self.reads)

    def transform(self, batch: Any) -> Any:
        from wit_world.exports.transform import Output_Batch, Output_Splice

        def call() -> Any:
            _check_describe()
            result = self.process(Batch._from_wit(batch))
            if not isinstance(result, Batch):
                raise TypeError(f"process must return a weir.Batch, not {type(result).__name__}")
            splice = result._to_splice()
            return Output_Batch(result._to_wit()) if splice is None else Output_Splice(splice)

        return _guarded(call)


@dataclass(frozen=True)
class Verdict:
    """One failed check: the row (from 0), the rule's id and a reason."""

    row: int
    rule: str
    message: str


class Validator:
    """Base of a validate plugin: subclass it as ``Validate`` in ``app.py``
    and override :meth:`process`."""

    def reads(self) -> Optional[Iterable[str]]:
        """Names of the columns :meth:`process` reads; see
        :meth:`Transformer.reads`. Verdict rows index the whole batch."""
        return None

    def process(self, batch: Batch) -> Iterable[Verdict]:
        """Yields one :class:`Verdict` (or ``(row, rule, message)`` tuple)
        per failed (row, rule); none means every row passes."""
        raise NotImplementedError("override Validator.process")

    def describe(self) -> Any:
        return _stage_info(self.reads)

    def validate(self, batch: Any) -> Any:
        from wit_world.exports.validate import Verdict as WitVerdict

        def call() -> Any:
            _check_describe()
            converted = Batch._from_wit(batch)
            out = []
            for verdict in self.process(converted):
                row, rule, message = verdict if isinstance(verdict, tuple) else (
                    verdict.row,
                    verdict.rule,
                    verdict.message,
                )
                if not 0 <= row < converted.num_rows:
                    raise ValueError(f"verdict row {row} is outside the batch's {converted.num_rows} rows")
                out.append(WitVerdict(row, rule, message))
            return out

        return _guarded(call)


class Extractor:
    """Base of an extract plugin: subclass it as ``Extract`` in ``app.py``
    and override :meth:`process`."""

    def process(self, data: bytes, source_name: str, content_type: str) -> Union[Batch, list]:
        """Parses ``data`` (one whole source object) into a batch or a list
        of batches with the same schema. Raise :class:`ParseError` saying
        where the input is malformed."""
        raise NotImplementedError("override Extractor.process")

    def extract(self, data: bytes, metadata: Any) -> Any:
        def call() -> Any:
            result = self.process(bytes(data), metadata.source_name, metadata.content_type)
            batches = [result] if isinstance(result, Batch) else list(result)
            return [batch._to_wit() for batch in batches]

        return _guarded(call)


# --------------------------------------------------------------------------
# Host services

_config_cache: Optional[dict] = None


def config() -> dict:
    """The stage's ``[stages.config]`` table as a dict (``{}`` when none),
    read from the host once and then cached."""
    global _config_cache
    if _config_cache is None:
        _config_cache = _json.loads(_host.config())
    return _config_cache


_LEVELS = {
    "trace": _host.Level.TRACE,
    "debug": _host.Level.DEBUG,
    "info": _host.Level.INFO,
    "warn": _host.Level.WARN,
    "error": _host.Level.ERROR,
}


def log(level: str, message: str) -> None:
    """Writes ``message`` to the host log at ``level`` (``"trace"``,
    ``"debug"``, ``"info"``, ``"warn"`` or ``"error"``)."""
    _host.log(_LEVELS[level], str(message))


def debug(message: str) -> None:
    """``log("debug", message)``."""
    log("debug", message)


def info(message: str) -> None:
    """``log("info", message)``."""
    log("info", message)


def warn(message: str) -> None:
    """``log("warn", message)``."""
    log("warn", message)


def error(message: str) -> None:
    """``log("error", message)``."""
    log("error", message)


# --------------------------------------------------------------------------
# Keyed state


def _key_bytes(key: Union[str, bytes]) -> bytes:
    return key.encode("utf-8") if isinstance(key, str) else bytes(key)


class _State:
    """Keyed state the host keeps for this stage (``weir:plugin/state``).

    The host stores it, commits it atomically with the output of the batch
    that changed it, and gives it back after a reload, a failure or a crash
    exactly as of the last committed output; a stateful plugin sees
    batches one at a time, in input order. Writes made by a batch that
    fails (an exception, a limit) are discarded with it. Keys are ``str``
    (UTF-8) or ``bytes`` and sort bytewise; values are ``bytes``, or any
    JSON value with the ``*_json`` methods.

    Calls are batch-shaped and cost fuel: read all the keys a batch needs
    with one ``get_many`` and write them back with one ``put_many``.
    Writing past the stage's ``max_state_bytes`` fails the batch as
    ``state_quota``. Needs ``state = true`` under ``[plugin]`` in
    ``weir-plugin.toml``.
    """

    def _wit(self) -> Any:
        if _wit_state is None:
            raise Internal(
                "this plugin uses weir.state but was built without keyed state: "
                "set `state = true` under [plugin] in weir-plugin.toml and build it again"
            )
        return _wit_state

    def get_many(self, keys: Iterable[Union[str, bytes]]) -> list:
        """The values (``bytes``) of ``keys`` in order; ``None`` where a key
        has none."""
        return list(self._wit().get_many([_key_bytes(k) for k in keys]))

    def get(self, key: Union[str, bytes]) -> Optional[bytes]:
        """The value of ``key``, or ``None``."""
        return self.get_many([key])[0]

    def put_many(self, items: Iterable[tuple]) -> None:
        """Sets each ``(key, value)`` (``value`` as bytes); a later pair for
        the same key wins."""
        wit = self._wit()
        wit.put_many([wit.Entry(_key_bytes(k), bytes(v)) for k, v in items])

    def put(self, key: Union[str, bytes], value: bytes) -> None:
        """Sets ``key`` to ``value``."""
        self.put_many([(key, value)])

    def delete_many(self, keys: Iterable[Union[str, bytes]]) -> None:
        """Removes ``keys`` (keys without a value are ignored)."""
        self._wit().delete_many([_key_bytes(k) for k in keys])

    def scan_prefix(
        self, prefix: Union[str, bytes], start_after: Union[str, bytes, None] = None, limit: int = 1000
    ) -> list:
        """At most ``limit`` ``(key, value)`` pairs (bytes) whose key starts
        with ``prefix``, in key order, after the key ``start_after`` when
        given (pass the last key of a page to get the next)."""
        after = None if start_after is None else _key_bytes(start_after)
        entries = self._wit().scan_prefix(_key_bytes(prefix), after, limit)
        return [(e.key, e.value) for e in entries]

    def get_json_many(self, keys: Iterable[Union[str, bytes]]) -> list:
        """The values of ``keys`` decoded from JSON; ``None`` where absent."""
        keys = list(keys)
        out = []
        for key, value in zip(keys, self.get_many(keys)):
            if value is None:
                out.append(None)
                continue
            try:
                out.append(_json.loads(value))
            except ValueError as e:
                raise Internal(f"the state of key {key!r} is not JSON: {e}") from None
        return out

    def get_json(self, key: Union[str, bytes]) -> Any:
        """The value of ``key`` decoded from JSON, or ``None``."""
        return self.get_json_many([key])[0]

    def put_json_many(self, items: Iterable[tuple]) -> None:
        """Sets each ``(key, value)``, ``value`` encoded as JSON."""
        self.put_many(
            (k, _json.dumps(v, separators=(",", ":")).encode("utf-8")) for k, v in items
        )

    def put_json(self, key: Union[str, bytes], value: Any) -> None:
        """Sets ``key`` to ``value`` encoded as JSON."""
        self.put_json_many([(key, value)])


#: The stage's keyed state; see :class:`_State`.
state = _State()
