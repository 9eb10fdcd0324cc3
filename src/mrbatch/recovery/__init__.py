"""Recovery: plans as data (:mod:`.plan`), their steps (:mod:`.steps`) and the engine that runs
them (:mod:`.runbook`); reconcile, redrive and the choice of target (:mod:`.operations`); plan
evaluation (:mod:`.evaluate`); the watcher that recommends or runs a failover (:mod:`.watch`);
answers to a waiting plan and its mode (:mod:`.answers`); the RPO gate (:mod:`.rpo`); recovery
reports (:mod:`.timeline`, :mod:`.audit`, :mod:`.report`) and their hash chain (:mod:`.chain`);
standby parity (:mod:`.parity`); and drills (:mod:`.drill`)."""
