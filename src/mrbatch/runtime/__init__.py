"""Running a deployment: starting, watching and stopping its processes (:mod:`.supervisor`), the
entry point of each long-running process (:mod:`.daemon`), and the built-in replicators between
regions (:mod:`.replication`)."""
