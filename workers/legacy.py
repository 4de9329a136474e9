"""Import a single-broker database (the second seed's migration path) into the multi-broker schema.

The source is any SQLAlchemy URL (a SQLite file typically) with tables ``orders``,
``positions`` and ``trade_logs`` that have no ``broker_name``: every row is tagged with the
broker given. Columns are matched by name; the first name found of each list is used:

- orders: id (``id``/``order_id``), client order id (``client_order_id``), broker order id
  (``broker_order_id``/``alpaca_order_id``/``external_id``), ``symbol``, ``side``, quantity
  (``quantity``/``qty``), filled (``filled_quantity``/``filled_qty``), average price
  (``average_price``/``filled_avg_price``/``avg_price``), ``order_type``/``type``, ``status``,
  ``fees``/``commission``, ``strategy_id``/``strategy``, ``asset_class``, ``created_at``.
- positions: ``symbol``, quantity (``quantity``/``qty``), average cost
  (``average_cost``/``avg_entry_price``/``avg_price``/``cost_basis``), ``market_price``/
  ``current_price``, ``market_value``, ``unrealized_pnl``/``unrealized_pl``, ``asset_class``.
- trade_logs: id (``id``/``trade_id``), order reference (``order_id``), ``symbol``, ``side``,
  quantity (``quantity``/``qty``), ``price``, ``fee``/``commission``/``fees``, time
  (``executed_at``/``timestamp``/``created_at``), ``broker_order_id``.

Before writing, the source is backed up (a copy of a SQLite file, and a JSON dump of the three
tables for any source). The import is idempotent: rows already imported are skipped. The
report gives, per table, the rows read, written and already there, and sums of quantity and
value in the source and in the target rows of this import, which must match.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import MetaData, create_engine, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine, make_url

from contracts import BrokerName
from workers.platform.db.models import Order, Position, TradeLog

STATUS = {
    "new": "accepted",
    "pending": "accepted",
    "pending_new": "accepted",
    "open": "accepted",
    "accepted": "accepted",
    "submitted": "submitted",
    "partially_filled": "partially_filled",
    "partial": "partially_filled",
    "filled": "filled",
    "done": "filled",
    "canceled": "cancelled",
    "cancelled": "cancelled",
    "rejected": "rejected",
    "expired": "expired",
    "failed": "failed",
}


IMPORTED_AT = datetime.now(UTC)
"""Stands for an order's unknown creation time (orders only; fills without a time are refused)."""


class LegacyError(Exception):
    """The source cannot be imported as it is; the message says what is wrong."""


@dataclass
class TableReport:
    read: int = 0
    written: int = 0
    already_there: int = 0
    refused: int = 0
    """Rows not imported because something they need is missing (listed in ``errors``)."""
    source_quantity: Decimal = Decimal(0)
    target_quantity: Decimal = Decimal(0)
    source_value: Decimal = Decimal(0)
    target_value: Decimal = Decimal(0)

    @property
    def matches(self) -> bool:
        return (
            self.read == self.written + self.already_there + self.refused
            and self.source_quantity == self.target_quantity
            and self.source_value == self.target_value
        )


@dataclass
class ImportReport:
    broker: BrokerName
    dry_run: bool
    backup: list[Path] = field(default_factory=list)
    tables: dict[str, TableReport] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    """One line per source row that was not imported, and why."""

    @property
    def matches(self) -> bool:
        return all(t.matches for t in self.tables.values())


def _pick(row: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    return default


def _decimal(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def _time(value: Any) -> datetime | None:
    """The source's time (UTC when it names no zone), or None when it has none: never invented."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def read_source(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of the three tables, as dicts keyed by column name."""
    engine = create_engine(url)
    try:
        meta = MetaData()
        try:
            meta.reflect(engine, only=["orders", "positions", "trade_logs"])
        except Exception as exc:  # noqa: BLE001  (InvalidRequestError names the missing tables)
            raise LegacyError(f"{make_url(url).render_as_string(hide_password=True)}: {exc}") from None
        with engine.connect() as conn:
            return {
                name: [dict(r) for r in conn.execute(select(meta.tables[name])).mappings()]
                for name in ("orders", "positions", "trade_logs")
            }
    finally:
        engine.dispose()


def backup(url: str, rows: dict[str, list[dict[str, Any]]], directory: Path) -> list[Path]:
    """A copy of a SQLite source file and a JSON dump of the tables, named with the time."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    written = []
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        copy = directory / f"{Path(parsed.database).name}.{stamp}.bak"
        shutil.copy2(parsed.database, copy)
        written.append(copy)
    dump = directory / f"legacy-{stamp}.json"
    dump.write_text(json.dumps(rows, default=str, indent=1))
    written.append(dump)
    return written


def _order_rows(broker: BrokerName, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        legacy_id = _pick(r, "id", "order_id")
        if legacy_id is None:
            raise LegacyError("orders: a row has no id (id or order_id)")
        raw_status = str(_pick(r, "status", default="filled")).lower()
        if raw_status not in STATUS:
            raise LegacyError(f"orders id {legacy_id}: unknown status {raw_status!r}")
        intent_id = f"legacy-{broker}-{legacy_id}"[:48]
        out.append(
            {
                "intent_id": intent_id,
                "strategy_id": str(_pick(r, "strategy_id", "strategy", default="legacy"))[:64],
                "broker_name": str(broker),
                "client_order_id": str(_pick(r, "client_order_id", default=intent_id))[:64],
                "broker_order_id": _pick(r, "broker_order_id", "alpaca_order_id", "external_id"),
                "attempt": 1,
                "symbol": str(r["symbol"]).upper(),
                "asset_class": str(_pick(r, "asset_class", default="equity")),
                "side": str(r["side"]).lower(),
                "order_type": str(_pick(r, "order_type", "type", default="market")).lower(),
                "quantity": _decimal(_pick(r, "quantity", "qty")),
                "filled_quantity": _decimal(_pick(r, "filled_quantity", "filled_qty")),
                "average_price": _pick(r, "average_price", "filled_avg_price", "avg_price"),
                "fees": _decimal(_pick(r, "fees", "commission")),
                "status": STATUS[raw_status],
                "report_seq": 1,
                "reason": "imported from the single-broker database",
                "created_at": _time(_pick(r, "created_at", "submitted_at")) or IMPORTED_AT,
            }
        )
    return out


def _position_rows(broker: BrokerName, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "broker_name": str(broker),
            "symbol": str(r["symbol"]).upper(),
            "asset_class": str(_pick(r, "asset_class", default="equity")),
            "quantity": _decimal(_pick(r, "quantity", "qty")),
            "average_cost": _decimal(_pick(r, "average_cost", "avg_entry_price", "avg_price", "cost_basis")),
            "market_price": _pick(r, "market_price", "current_price"),
            "market_value": _pick(r, "market_value"),
            "unrealized_pnl": _pick(r, "unrealized_pnl", "unrealized_pl"),
        }
        for r in rows
    ]


def _fill_rows(
    broker: BrokerName, rows: list[dict[str, Any]], orders: dict[Any, dict[str, Any]], errors: list[str]
) -> list[dict[str, Any]]:
    """The fills to import; a fill whose time is unknown is not imported (its time would be a
    guess, and P&L and execution quality depend on it) but listed in ``errors``."""
    out = []
    for r in rows:
        legacy_id = _pick(r, "id", "trade_id")
        if legacy_id is None:
            raise LegacyError("trade_logs: a row has no id (id or trade_id)")
        executed_at = _time(_pick(r, "executed_at", "timestamp", "created_at"))
        if executed_at is None:
            errors.append(f"trade_logs id {legacy_id}: no time (executed_at, timestamp or created_at); not imported")
            continue
        order = orders.get(_pick(r, "order_id"))
        out.append(
            {
                "fill_id": f"legacy:{broker}:{legacy_id}",
                "intent_id": order["intent_id"] if order else f"legacy-{broker}-trade-{legacy_id}"[:48],
                "strategy_id": order["strategy_id"] if order else "legacy",
                "broker_name": str(broker),
                "broker_order_id": str(_pick(r, "broker_order_id", default=(order or {}).get("broker_order_id") or "")),
                "symbol": str(r["symbol"]).upper(),
                "side": str(r["side"]).lower(),
                "quantity": _decimal(_pick(r, "quantity", "qty")),
                "price": _decimal(r["price"]),
                "fee": _decimal(_pick(r, "fee", "commission", "fees")),
                "executed_at": executed_at,
            }
        )
    return out


def import_legacy(
    source_url: str,
    target: Engine,
    broker: BrokerName,
    *,
    dry_run: bool = False,
    backup_dir: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> ImportReport:
    report = ImportReport(broker=broker, dry_run=dry_run)
    progress("reading the source")
    rows = read_source(source_url)
    if not dry_run:
        progress("backing up the source")
        report.backup = backup(source_url, rows, backup_dir or Path(".mbx/backups"))
    legacy_orders = {_pick(r, "id", "order_id"): r for r in rows["orders"]}
    orders = _order_rows(broker, rows["orders"])
    by_legacy_id = {lid: o for lid, o in zip(legacy_orders, orders, strict=True)}
    fills = _fill_rows(broker, rows["trade_logs"], by_legacy_id, report.errors)
    plan = {
        "orders": (Order, orders, ["broker_name", "client_order_id"]),
        "positions": (Position, _position_rows(broker, rows["positions"]), ["broker_name", "symbol"]),
        "trade_logs": (TradeLog, fills, ["fill_id"]),
    }
    read = {"orders": len(orders), "positions": len(rows["positions"]), "trade_logs": len(rows["trade_logs"])}
    with target.begin() as conn:
        for name, (model, mapped, keys) in plan.items():
            progress(f"{name}: {len(mapped)} rows")
            table = TableReport(read=read[name], refused=read[name] - len(mapped))
            quantity_col = "quantity"
            value = _value_of(name)
            table.source_quantity = sum((m[quantity_col] for m in mapped), Decimal(0))
            table.source_value = sum((value(m) for m in mapped), Decimal(0))
            if mapped:
                stmt = insert(model).values(mapped).on_conflict_do_nothing(index_elements=keys)
                table.written = len(conn.execute(stmt.returning(model.__table__.c.id)).all())
            table.already_there = len(mapped) - table.written
            target_rows = _target_rows(conn, name, broker, mapped)
            table.target_quantity = sum((r[quantity_col] for r in target_rows), Decimal(0))
            table.target_value = sum((value(r) for r in target_rows), Decimal(0))
            report.tables[name] = table
        if dry_run:
            conn.rollback()
    return report


def _value_of(table: str) -> Callable[[Any], Decimal]:
    if table == "orders":
        return lambda r: _decimal(r["filled_quantity"]) * _decimal(r["average_price"])
    if table == "positions":
        return lambda r: _decimal(r["quantity"]) * _decimal(r["average_cost"])
    return lambda r: _decimal(r["quantity"]) * _decimal(r["price"])


def _target_rows(conn: Any, table: str, broker: BrokerName, mapped: list[dict[str, Any]]) -> list[Any]:
    """The target's rows that this import's rows map to, read back from the database."""
    if table == "orders":
        keys = [m["client_order_id"] for m in mapped]
        sql = "SELECT * FROM orders WHERE broker_name = :b AND client_order_id = ANY(:k)"
    elif table == "positions":
        keys = [m["symbol"] for m in mapped]
        sql = "SELECT * FROM positions WHERE broker_name = :b AND symbol = ANY(:k)"
    else:
        keys = [m["fill_id"] for m in mapped]
        sql = "SELECT * FROM trade_logs WHERE broker_name = :b AND fill_id = ANY(:k)"
    return list(conn.execute(text(sql), {"b": str(broker), "k": keys}).mappings())
