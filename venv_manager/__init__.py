"""venv_manager: immutable, content-addressed Python environments built with uv.

A standalone service (it imports nothing of wtb_conf). This release has the core — spec
validation, single-flight atomic builds, the audit database; the gRPC service and REST mirror
over it are the next step (see issue "venv_manager" and docs/venv_manager.md).
"""
