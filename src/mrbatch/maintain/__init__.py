"""Running mrbatch for months: retention and garbage collection (:mod:`.gc`), backup and
point-in-time restore of a region (:mod:`.backup`, :mod:`.restore`)."""
