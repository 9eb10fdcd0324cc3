"""Configuration: the typed model of ``mrbatch.toml`` (:mod:`.settings`; every error names the
file and the key), the workspace it describes (:mod:`.workspace`: the data directory, secrets,
paths) and ``mrbatch init`` with its sample pipeline (:mod:`.initialize`, ``samples/``)."""
