"""The sample contract computed independently of mrbatch (Python's csv module, row by row), so
the end-to-end tests compare the system's output against something it did not produce."""

from __future__ import annotations

import csv
import io

from mrbatch.config.initialize import sample_bytes

OUTPUT_HEADER = [
    "uuid",
    "Country",
    "Item Type",
    "Sales Channel",
    "Order Priority",
    "Order Date",
    "Region",
    "Ship Date",
    "Units Sold",
    "Unit Price",
    "Unit Cost",
    "Total Revenue",
    "Total Cost",
    "Total Profit",
]
FINANCIAL = ["unitsSold", "unitPrice", "unitCost", "totalRevenue", "totalCost", "totalProfit"]


def expected_output(orders: bytes | None = None, financial: bytes | None = None) -> bytes:
    orders = sample_bytes("orders.csv") if orders is None else orders
    financial = sample_bytes("financial.csv") if financial is None else financial
    fin_rows = csv.DictReader(io.StringIO(financial.decode("utf-8")))
    by_uuid = {row["uuid"]: [row[c] for c in FINANCIAL] for row in fin_rows}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(OUTPUT_HEADER)
    reader = csv.reader(io.StringIO(orders.decode("utf-8-sig")))
    next(reader)
    for row in reader:
        writer.writerow(row + by_uuid[row[0]])
    return out.getvalue().encode("utf-8")
