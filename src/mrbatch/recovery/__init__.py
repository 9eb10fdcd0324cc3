"""Recovery: plans as data (:mod:`.plan`), their steps (:mod:`.steps`) and the engine that runs
them (:mod:`.runbook`); reconcile, redrive and the choice of target (:mod:`.operations`); plan
evaluation (:mod:`.evaluate`); and the watcher that recommends or runs a failover
(:mod:`.watch`)."""
