"""The best-execution report as Markdown, CSV or a self-contained HTML page (``mbx report
execution`` and the dashboard's Execution tab). Figures are rounded here only: money to the
cent, fees per share and price differences per share to a hundredth of a cent, times to a tenth
of a millisecond, rates to a tenth of a percent, basis points to a hundredth."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.readmodel.execution_report import ExecutionReport, ExecutionRow, Percentiles

FORMATS = ("md", "csv", "html")

EXECUTION_HEADER = (
    "broker",
    "order type",
    "size (USD)",
    "orders",
    "notional USD",
    "fill rate",
    "cancel rate",
    "rejected",
    "failed",
    "failovers",
    "ack p50/p90/p99 ms",
    "first fill p50/p90/p99 ms",
    "complete fill p50/p90/p99 ms",
    "orders vs quote",
    "price improvement USD",
    "improvement per share",
    "effective spread per share",
    "effective spread bps",
    "fees USD",
    "fee per share",
    "fee per 1,000 USD",
)
ROUTING_HEADER = ("broker", "rule", "directed by strategy", "routes", "share")
SUMMARY_HEADER = ("broker", "routes", "share", "directed", "chosen by mbx")


def rounded(value: Decimal | None, places: int) -> str:
    if value is None:
        return "-"
    return str(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN))


def percent(value: Decimal | None) -> str:
    return "-" if value is None else f"{rounded(value * 100, 1)}%"


def milliseconds(value: Percentiles) -> str:
    return "-" if value is None else " / ".join(f"{v:.1f}" for v in value)


def execution_cells(row: ExecutionRow) -> tuple[str, ...]:
    return (
        row.broker or "all",
        row.order_type or "all",
        row.size_bucket or "all",
        str(row.orders),
        rounded(row.notional, 2),
        percent(row.fill_rate),
        percent(row.cancel_rate),
        str(row.rejected),
        str(row.failed),
        str(row.failovers),
        milliseconds(row.ack_ms),
        milliseconds(row.first_fill_ms),
        milliseconds(row.complete_fill_ms),
        str(row.quoted_orders),
        rounded(row.improvement_usd, 2),
        rounded(row.improvement_per_share, 4),
        rounded(row.effective_spread_per_share, 4),
        rounded(row.effective_spread_bps, 2),
        rounded(row.fees, 2),
        rounded(row.fee_per_share, 4),
        rounded(row.fee_per_1000_usd, 2),
    )


def tables(report: ExecutionReport) -> list[tuple[str, Sequence[str], list[tuple[str, ...]]]]:
    """(title, header, rows) of each table of the report, in the order they are printed."""
    from workers.readmodel.execution_report import routing_by_broker  # noqa: PLC0415

    return [
        ("Execution quality", EXECUTION_HEADER, [execution_cells(r) for r in report.rows]),
        (
            "Routing by broker",
            SUMMARY_HEADER,
            [(b, str(n), percent(s), str(d), str(c)) for b, n, s, d, c in routing_by_broker(report)],
        ),
        (
            "Routing by broker and rule",
            ROUTING_HEADER,
            [
                (r.broker, r.rule, "yes" if r.directed else "no", str(r.routes), percent(r.share))
                for r in report.routing
            ],
        ),
    ]


def _md_line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def markdown(report: ExecutionReport) -> str:
    out = [f"# Best-execution report, {report.month} (UTC)", ""]
    for title, header, rows in tables(report):
        out += [f"## {title}", "", _md_line(header), _md_line(["---"] * len(header))]
        out += [_md_line(r) for r in rows] + [""]
    return "\n".join(out)


def comma_separated(report: ExecutionReport) -> str:
    """Each table under a line naming it, tables apart by an empty line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for number, (title, header, rows) in enumerate(tables(report)):
        if number:
            writer.writerow([])
        writer.writerow([f"# {title}"])
        writer.writerow(header)
        writer.writerows(rows)
    return buffer.getvalue()


STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse;margin-bottom:2em;font-size:13px}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    "th{background:#f2f2f2}td:nth-child(-n+3){text-align:left}"
)


def page(report: ExecutionReport) -> str:
    """A whole HTML page: inline style, no script, no external asset."""
    title = f"Best-execution report, {html.escape(report.month)} (UTC)"
    out = [f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>']
    out += [f"<style>{STYLE}</style></head><body><h1>{title}</h1>"]
    for name, header, rows in tables(report):
        out.append(f"<h2>{html.escape(name)}</h2><table><thead><tr>")
        out += [f"<th>{html.escape(h)}</th>" for h in header] + ["</tr></thead><tbody>"]
        for row in rows:
            out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
        out.append("</tbody></table>")
    out.append("</body></html>\n")
    return "\n".join(out)


RENDERERS: dict[str, Callable[[ExecutionReport], str]] = {"md": markdown, "csv": comma_separated, "html": page}
