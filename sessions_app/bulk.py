"""Batched row writes on the hot paths (plan inserts, upload outcomes), without the ORM's
per-row, per-field SQL compilation: bulk_create costs ~100 us and bulk_update ~2.5 ms of Python
per row, most of the time of a million-file plan or a 10,000-file upload. One statement per
batch on PostgreSQL (COPY into a temporary table, then one statement); on SQLite, where a statement is no round trip, plain
statements inside one transaction (IMMEDIATE: no other writer meanwhile).

Both say which rows they wrote, so the counters kept beside the rows (sessions_app.files) stay
exact even when a re-run scan inserts a row twice or a row moved on before its outcome came."""

from __future__ import annotations

import io
import math
import operator
import zlib
from collections.abc import Sequence
from typing import Any

import psycopg2
from django.db import IntegrityError, connection, models, transaction
from django.db.models import QuerySet
from django.db.models import signals
from django.db.models.base import ModelState
from django.db.models.constants import OnConflict
from psycopg2.extensions import adapt
from psycopg2.extras import execute_values

# Field types whose Python values the database drivers take as they are.
_AS_IS = {"BigIntegerField", "BooleanField", "CharField", "FloatField", "ForeignKey", "IntegerField",
          "PositiveIntegerField", "TextField"}
# psycopg2 (and COPY's text) take an aware datetime as it is; the values written here are ours.
_AS_IS_POSTGRESQL = {"DateTimeField"}


def _values(rows: Sequence[models.Model], fields: list[models.Field]) -> list[list]:
    as_is = _AS_IS | _AS_IS_POSTGRESQL if connection.vendor == "postgresql" else _AS_IS
    getters = [(f.attname, None if f.get_internal_type() in as_is else f.get_db_prep_save) for f in fields]
    return [
        [v if prep is None or v is None else prep(v, connection)
         for attname, prep in getters for v in (getattr(row, attname),)]
        for row in rows
    ]


def insert_new(model: type[models.Model], rows: Sequence[models.Model], unique: Sequence[str]) -> list[models.Model]:
    """INSERT rows, skipping any that collide with the unique constraint over the `unique`
    attnames (a re-run scan); returns the rows inserted. Primary keys are not read back."""
    if not rows:
        return []
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    qn = connection.ops.quote_name
    head = "{} {} ({})".format(connection.ops.insert_statement(on_conflict=OnConflict.IGNORE),
                               qn(model._meta.db_table), ", ".join(qn(f.column) for f in fields))
    tail = connection.ops.on_conflict_suffix_sql(fields, OnConflict.IGNORE, None, None)
    key = [model._meta.get_field(name) for name in unique]
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            returning = ", ".join(qn(f.column) for f in key)
            done = execute_values(cursor.cursor, f"{head} VALUES %s {tail} RETURNING {returning}",
                                  _values(rows, fields), page_size=1000, fetch=True)
            inserted = {tuple(r) for r in done}
            return [row for row in rows if tuple(getattr(row, f.attname) for f in key) in inserted]
        there = _existing(model, rows, key)
        new = [row for row in rows if tuple(getattr(row, f.attname) for f in key) not in there]
        cursor.executemany(f"{head} VALUES ({', '.join(['%s'] * len(fields))}) {tail}", _values(new, fields))
        return new


def _existing(model: type[models.Model], rows: Sequence[models.Model], key: list[models.Field]) -> set[tuple]:
    lookup = {f"{f.attname}__in": {getattr(row, f.attname) for row in rows} for f in key}
    return set(model._default_manager.filter(**lookup).values_list(*(f.attname for f in key)))


def update_fields(model: type[models.Model], rows: Sequence[models.Model], names: Sequence[str],
                  where: dict[str, Any] | None = None) -> list[Any]:
    """UPDATE the named fields of rows (by primary key) to their values on the instances, only
    where the columns in `where` still hold the given values; returns the pks updated."""
    if not rows:
        return []
    meta = model._meta
    fields = [meta.get_field(name) for name in names]
    qn = connection.ops.quote_name
    table, pk = qn(meta.db_table), qn(meta.pk.column)
    params = [v + [row.pk] for v, row in zip(_values(rows, fields), rows)]
    with transaction.atomic(savepoint=False), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # COPY into a temporary table, then one UPDATE … FROM it: a multi-row VALUES list costs
            # ~90 us of mogrify per row, the COPY text a few.
            columns = [qn(f.column) for f in fields] + [pk]
            temp = _copy_to_temp(cursor, meta.db_table, columns, params)
            sets = ", ".join(f"{c} = v.{c}" for c in columns[:-1])
            extra = "".join(f" AND {table}.{qn(meta.get_field(name).column)} = {adapt(v).getquoted().decode()}"
                            for name, v in (where or {}).items())
            cursor.execute(f"UPDATE {table} SET {sets} FROM {temp} AS v WHERE {table}.{pk} = v.{pk}{extra} "
                           f"RETURNING {table}.{pk}")
            return [r[0] for r in cursor.fetchall()]
        # No other writer while this transaction runs (IMMEDIATE), so what holds now holds for the UPDATE.
        still = set(meta.base_manager.filter(pk__in=[p[-1] for p in params], **(where or {}))
                    .values_list("pk", flat=True)) if where else {p[-1] for p in params}
        params = [p for p in params if p[-1] in still]
        sets = ", ".join(f"{qn(f.column)} = %s" for f in fields)
        cursor.executemany(f"UPDATE {table} SET {sets} WHERE {pk} = %s", params)
        return [p[-1] for p in params]


# -- plain tuples: the plan's inserts and the catalog's writes ------------------------------------
# No model instances at all: a million-file plan builds tuples, and PostgreSQL takes them by COPY
# (~4x the rows/s of a multi-row INSERT), through a temporary table so that rows colliding with a
# unique constraint (a re-run scan) are skipped rather than failing the whole COPY.

_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_text(value: Any) -> str:
    # By exact type, the commonest first: it runs for every value of every row written.
    kind = type(value)
    if kind is str:
        return value.translate(_COPY_ESCAPES) if value else ""
    if kind is int:
        return str(value)
    if value is None:
        return "\\N"
    if kind is bool:
        return "t" if value else "f"
    if kind is float:
        return repr(value)
    return str(value).translate(_COPY_ESCAPES)


def _defaults(model: type[models.Model], given: Sequence[str],
              same: dict[str, Any] | None = None) -> tuple[list[models.Field], list[Any]]:
    """Every other concrete column (the primary key aside) and its value for every row, ready for
    the driver: the one in `same`, else its default."""
    same = same or {}
    fields = [f for f in model._meta.concrete_fields if not f.primary_key and f.attname not in given]
    return fields, [f.get_db_prep_save(same[f.attname] if f.attname in same else f.get_default(), connection)
                    for f in fields]


def encoded(model: type[models.Model], columns: Sequence[str], rows: Sequence[tuple]) -> str | None:
    """The rows as insert_tuples() sends them to PostgreSQL's COPY (None elsewhere): made ahead, in
    another thread than the one that writes them, the writing thread only talks to the database."""
    if connection.vendor != "postgresql" or not rows:
        return None
    return _copy_text_of(rows, _defaults(model, columns)[1])


def insert_tuples(model: type[models.Model], columns: Sequence[str], rows: Sequence[tuple], *,
                  new: bool = False, text: str | None = None, same: dict[str, Any] | None = None) -> int:
    """INSERT rows given as tuples of the `columns` (attnames; every other column gets the value
    in `same`, one for every row, or its default), skipping those that collide with a unique
    constraint — unless the caller knows they are `new` (none can collide): then PostgreSQL takes
    them by a plain COPY into the table, without the temporary table. `text`: the rows as
    encoded() made them. Returns how many were inserted. Call inside the transaction the rows
    belong to."""
    if not rows:
        return 0
    meta, qn = model._meta, connection.ops.quote_name
    rest, defaults = _defaults(model, columns, same)
    names = ", ".join(qn(meta.get_field(c).column) for c in columns) + "".join(f", {qn(f.column)}" for f in rest)
    table = qn(meta.db_table)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql" and new:
            source = io.StringIO(text) if text is not None else _Encoding(rows, defaults)
            try:
                with transaction.atomic():  # a savepoint: should another writer have come in after all
                    cursor.cursor.copy_expert(f"COPY {table} ({names}) FROM STDIN", source)
                return len(rows)
            except (IntegrityError, psycopg2.IntegrityError):  # the driver's own: copy_expert is no Django call
                pass
        if connection.vendor == "postgresql":
            text = text if text is not None else _copy_text_of(rows, defaults)
            return _copy_ignoring_existing(cursor, meta.db_table, names, text)
        head = connection.ops.insert_statement(on_conflict=OnConflict.IGNORE)
        # The defaults as literals where they can be: the same for every row, they are neither
        # added to each row's tuple nor bound once per row (a third of a SQLite part's insert).
        literals = [_sql_literal(v) for v in defaults]
        bound = tuple(v for v, literal in zip(defaults, literals) if literal is None)
        marks = ", ".join(["%s"] * len(columns) + [literal or "%s" for literal in literals])
        values = rows if not bound else [row + bound for row in rows]
        cursor.executemany(f"{head} {table} ({names}) VALUES ({marks})", values)
        return cursor.rowcount


class _Encoding:
    """Rows' COPY text, encoded a chunk at a time as the driver reads it: PostgreSQL inserts one
    chunk while the next is encoded (encoding a whole batch first left it idle meanwhile: 1.4–1.8 s
    of a 1,000,000-row plan)."""

    CHUNK = 500  # rows

    def __init__(self, rows: Sequence[tuple], defaults: list[Any]):
        self.rows, self.defaults, self.at = rows, defaults, 0

    def read(self, size: int = -1) -> str:  # the driver's call; "" ends the COPY
        chunk = self.rows[self.at:self.at + self.CHUNK]
        self.at += self.CHUNK
        return _copy_text_of(chunk, self.defaults)


def _sql_literal(value: Any) -> str | None:
    """A constant as SQL (None if it has to be bound): a number, a boolean, NULL or plain text."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return repr(value)
    if type(value) is str and value.isprintable() and "%" not in value:
        return "'" + value.replace("'", "''") + "'"
    return None


def _copy_text_of(rows: Sequence[tuple], defaults: list[Any]) -> str:
    """The rows' COPY text, made a column at a time: a column's values share a type (or are all
    the same), so each column is encoded by a few loops in C rather than a call per value (a
    call per value was most of the time the scan thread spent on a first sync's rows)."""
    if not rows:
        return ""
    tail = "".join("\t" + _copy_text(v) for v in defaults) + "\n"
    columns = [_column_text(values) for values in zip(*rows)]
    return tail.join(map("\t".join, zip(*columns))) + tail


def _column_text(values: tuple) -> list[str]:
    first = values[0]
    if len(set(map(type, values))) == 1:
        kind = type(first)
        # One value throughout (a batch's session, project, device, destination): encoded once. Not
        # floats: 0.0 == -0.0. One type only: 1 == True must not merge them.
        if kind is not float and values.count(first) == len(values):
            return [_copy_text(first)] * len(values)
        # Joined by NUL, which no value PostgreSQL can store holds (one that does is refused below).
        if kind is str and (joined := "\0".join(values)).count("\0") == len(values) - 1:
            if "\\" in joined or "\t" in joined or "\n" in joined or "\r" in joined:
                joined = joined.translate(_COPY_ESCAPES)
            return joined.split("\0")
        if kind is int:
            return list(map(str, values))
        if kind is float:
            return list(map(repr, values))
    return list(map(_copy_text, values))


def _copy_to_temp(cursor, table: str, columns: Sequence[str], rows: Sequence[Sequence] | str) -> str:
    """COPY rows (or their COPY text) into this connection's temporary table of `columns` of
    `table` (emptied first); returns its name."""
    qn = connection.ops.quote_name
    names = ", ".join(columns)
    temp = qn(f"copy_{table}_{zlib.crc32(names.encode()):08x}")
    # Per connection, and gone with it (or with the transaction that created it): IF NOT EXISTS.
    cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {temp} AS SELECT {names} FROM {qn(table)} WITH NO DATA")
    cursor.execute(f"TRUNCATE {temp}")
    text = rows if isinstance(rows, str) else _copy_text_of(rows, [])
    cursor.cursor.copy_expert(f"COPY {temp} ({names}) FROM STDIN", io.StringIO(text))
    return temp


def _copy_ignoring_existing(cursor, table: str, names: str, text: str) -> int:
    qn = connection.ops.quote_name
    temp = _copy_to_temp(cursor, table, names.split(", "), text)
    cursor.execute(f"INSERT INTO {qn(table)} ({names}) SELECT {names} FROM {temp} ON CONFLICT DO NOTHING")
    return cursor.rowcount


def id_floor(model: type[models.Model]) -> int | None:
    """On PostgreSQL, a value every id the table's rows get from now on is above (the sequence's
    next, taken: ids may have gaps); None elsewhere."""
    if connection.vendor != "postgresql":
        return None
    meta = model._meta
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, %s))", [meta.db_table, meta.pk.column])
        return cursor.fetchone()[0]


def upsert_tuples(model: type[models.Model], columns: Sequence[str], rows: Sequence[tuple],
                  unique: Sequence[str], update: Sequence[str]) -> None:
    """INSERT rows (tuples of the `columns`, every other column its default); a row whose
    `unique` columns match an existing one updates that row's `update` columns instead. Of rows
    repeating a unique value, the last wins."""
    if not rows:
        return
    meta, qn = model._meta, connection.ops.quote_name
    key = operator.itemgetter(*[list(columns).index(name) for name in unique])
    rows = list({key(row): row for row in rows}.values())
    rest, defaults = _defaults(model, columns)
    fields = [meta.get_field(c) for c in columns] + rest
    names = ", ".join(qn(f.column) for f in fields)
    tail = connection.ops.on_conflict_suffix_sql(
        fields, OnConflict.UPDATE, [meta.get_field(n).column for n in update], [meta.get_field(n).column for n in unique]
    )
    values = [tuple(row) + tuple(defaults) for row in rows]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            temp = _copy_to_temp(cursor, meta.db_table, names.split(", "), values)
            cursor.execute(f"INSERT INTO {qn(meta.db_table)} ({names}) SELECT {names} FROM {temp} {tail}")
        else:
            marks = ", ".join(["%s"] * len(fields))
            cursor.executemany(f"INSERT INTO {qn(meta.db_table)} ({names}) VALUES ({marks}) {tail}", values)


# -- claims: select, update and read back in one statement ----------------------------------------


def update_returning(selection: QuerySet, where: dict[str, Any], **sets: Any) -> list[models.Model]:
    """UPDATE the rows `selection` picks (ordered, sliced, locked as it says) that still match
    `where`, setting `sets`, and return them as instances, in primary key order: one statement
    (UPDATE … WHERE pk IN (…) RETURNING, PostgreSQL and SQLite ≥ 3.35) where a select of the
    ids, an update and a select of the rows took three. Call inside a transaction."""
    model = selection.model
    meta, qn = model._meta, connection.ops.quote_name
    table = qn(meta.db_table)
    pick, pick_params = selection.values("pk").query.sql_with_params()
    set_fields = [meta.get_field(name) for name in sets]
    where_fields = [meta.get_field(name) for name in where]
    assignments = ", ".join(f"{qn(f.column)} = %s" for f in set_fields)
    conditions = "".join(f" AND {table}.{qn(f.column)} = %s" for f in where_fields)
    params = (list(pick_params) + [f.get_db_prep_save(v, connection) for f, v in zip(set_fields, sets.values())]
              + [f.get_db_prep_save(v, connection) for f, v in zip(where_fields, where.values())])
    # What the statement sets is not read back (a claim's token would be parsed once per row).
    known = {meta.get_field(name).attname: v for name, v in sets.items()}
    fields = [f for f in meta.concrete_fields if f.attname not in known]
    columns = ", ".join(f"{table}.{qn(f.column)}" for f in fields)
    # The pick is a CTE computed once: as a plain IN (subquery), PostgreSQL may run it again per
    # row, and a locking pick re-run past rows already moved returns more than its LIMIT.
    sql = (f"WITH picked AS MATERIALIZED ({pick}) UPDATE {table} SET {assignments} "
           f"WHERE {table}.{qn(meta.pk.column)} IN (SELECT pk FROM picked){conditions} RETURNING {columns}")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchall()
    convert = _converters(fields, meta.db_table)
    if convert:
        found = [_converted(row, convert) for row in found]
    names = [f.attname for f in fields]
    pk_at = names.index(meta.pk.attname)
    return _instances(model, names, sorted(found, key=lambda r: r[pk_at]), known)


def _converters(fields: Sequence[models.Field], table: str) -> dict[int, tuple[list, Any]]:
    """What the ORM applies to the values a driver returns (SQLite's dates and booleans, UUIDs)."""
    out = {}
    for i, f in enumerate(fields):
        col = f.get_col(table)
        found = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        if found:
            out[i] = (found, col)
    return out


def _converted(row: Sequence, convert: dict[int, tuple[list, Any]]) -> list:
    row = list(row)
    for i, (found, col) in convert.items():
        for converter in found:
            row[i] = converter(row[i], col, connection)
    return row


def unsaved(model: type[models.Model], names: list[str], rows: Sequence[Sequence]) -> list[models.Model]:
    """Instances of rows not saved yet, of the `names` values and every other field's default, as
    the constructor would make them (without its cost: ~20 us a row)."""
    known = {f.attname: f.get_default() for f in model._meta.concrete_fields if f.attname not in names}
    out = _instances(model, names, rows, known)
    for obj in out:
        obj._state.adding, obj._state.db = True, None
    return out


def _instances(model: type[models.Model], names: list[str], rows: Sequence[Sequence],
               known: dict[str, Any]) -> list[models.Model]:
    """What Model.from_db makes of each row (with the `known` values of the other fields), a
    thousand rows a claim: without the model's init signals when nothing listens to them
    (Model.__init__ is most of from_db's cost)."""
    if signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model):
        out = [model.from_db(connection.alias, names, row) for row in rows]
        for obj in out:
            obj.__dict__.update(known)
        return out
    alias, new = connection.alias, model.__new__
    out = []
    for row in rows:
        obj = new(model)
        obj.__dict__.update(zip(names, row))
        obj.__dict__.update(known)
        obj._state = ModelState()
        obj._state.adding, obj._state.db = False, alias
        out.append(obj)
    return out
