"""The data model every part shares: object keys and how an input maps to its outputs
(:mod:`.keys`), and the records of the state table — Accepted, FileRun, ChunkRun
(:mod:`.records`)."""
