"""Running a deployment: starting, watching and stopping its processes (:mod:`.supervisor`),
restarting the ones that die, with backoff (:mod:`.restarter`), the entry point of each
long-running process (:mod:`.daemon`), and the built-in replicators between regions
(:mod:`.replication`)."""
