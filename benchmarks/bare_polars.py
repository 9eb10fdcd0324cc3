"""The baseline: the sample transformation as a bare polars script, with no durability.

    python benchmarks/bare_polars.py ORDERS.csv REFERENCE.csv OUTPUT.csv

Reads everything as text, validates the sample schema (required, maxLength, uuid pattern),
joins the financial reference data on uuid, writes valid rows in input order and the rejected
ones beside them. Output bytes match mrbatch's for the same inputs.
"""

from __future__ import annotations

import sys

import polars as pl

MAX_LENGTHS = {
    "uuid": 9,
    "Country": 50,
    "Item Type": 30,
    "Sales Channel": 10,
    "Order Priority": 5,
    "Order Date": 10,
    "Region": 100,
    "Ship Date": 10,
}
RENAMES = {
    "unitsSold": "Units Sold",
    "unitPrice": "Unit Price",
    "unitCost": "Unit Cost",
    "totalRevenue": "Total Revenue",
    "totalCost": "Total Cost",
    "totalProfit": "Total Profit",
}


def main(orders_path: str, reference_path: str, output_path: str) -> None:
    orders = pl.read_csv(orders_path, infer_schema=False).with_row_index("_row")
    reference = pl.read_csv(reference_path, infer_schema=False).rename(RENAMES)
    valid = pl.lit(True)
    for column, limit in MAX_LENGTHS.items():
        value = pl.col(column)
        valid = valid & value.is_not_null() & (value.str.len_chars() <= limit)
    valid = valid & pl.col("uuid").str.contains(r"^[0-9]{9}$")
    checked = orders.with_columns(_valid=valid.fill_null(False))
    joined = checked.filter("_valid").join(reference, on="uuid", how="left", maintain_order="left")
    matched = joined.filter(pl.col("Units Sold").is_not_null())
    matched.drop("_row", "_valid").write_csv(output_path)
    rejected = pl.concat(
        [
            checked.filter(~pl.col("_valid")).select("_row"),
            joined.filter(pl.col("Units Sold").is_null()).select("_row"),
        ]
    )
    rejected.write_csv(output_path + ".rejected")


if __name__ == "__main__":
    main(*sys.argv[1:4])
