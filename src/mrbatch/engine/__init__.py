"""The engine of one region: its process loop (:mod:`.region`: trigger, claim, take over,
drive), the orchestrator that drives each run through its states durably (:mod:`.orchestrator`
with its stages :mod:`.chunks`, :mod:`.publish` and the failure mails :mod:`.failmail` over
:mod:`.driver`), the tasks the executor runs (:mod:`.tasks`) with the pipeline a run pinned
(:mod:`.pipelines`), the streaming merge (:mod:`.merge`) and the takeover of runs from another
region or epoch (:mod:`.takeover`)."""
