"""The record pipeline, pure functions over bytes (polars): split a CSV stream into chunks of
whole records (:mod:`.csvsplit`), parse a chunk (:mod:`.parse`), validate it against the record
schema (:mod:`.schema`) and enrich it from reference data (:mod:`.reference`) in
:mod:`.chunk`, and the output and rejected-rows formats (:mod:`.formats`). Nothing here touches
a store or a record."""
