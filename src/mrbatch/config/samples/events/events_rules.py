"""The events example's own code: a row check and a transform (mrbatch imports this module
from the workspace's pipeline/ directory; see [pipelines.events] in mrbatch.toml)."""

import polars as pl


def not_a_test_customer(frame: pl.DataFrame) -> tuple[pl.Series, str]:
    """Row check: true where the row passes."""
    return ~frame.get_column("customer").str.starts_with("test-"), "customer: a test account"


def amount_in_eur(frame: pl.DataFrame) -> pl.DataFrame:
    """Transform: the amount converted with the rate the API answered, two decimals."""
    eur = pl.col("amount").cast(pl.Float64) * pl.col("rate_to_eur").cast(pl.Float64)
    return frame.with_columns(eur.round(2).cast(pl.String).alias("amount_eur"))
