"""Proving the invariants: ``mrbatch verify`` (:mod:`.verify`, :mod:`.checks`,
:mod:`.verdicts`, reading :mod:`.evidence` and recounting with :mod:`.recount`), chaos
experiments (:mod:`.chaos`, :mod:`.workers`), seeded scenarios (:mod:`.scenario`) and the load
generator (:mod:`.loadgen`, :mod:`.generate`)."""
