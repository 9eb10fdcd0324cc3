"""The HTTP gateway (FastAPI + uvicorn): the app and its server (:mod:`.app`), objects over
HTTP — uploads, downloads with presigned links (:mod:`.objects`) — and the read-only API,
metrics and dashboard (:mod:`.api`, ``dashboard/``)."""
