"""Configuration: the typed model of ``mrbatch.toml`` (:mod:`.settings`, read by
:mod:`.parsing`: every error names the file and the key, or the line and column; declared
pipelines in :mod:`.pipelines`), the workspace it describes (:mod:`.workspace`: the data
directory, secrets, paths), running processes following edits of it (:mod:`.reload`), what a
process reports it runs with for standby parity (:mod:`.fingerprint`) and ``mrbatch init``
with its sample pipeline (:mod:`.initialize`, ``samples/``)."""
