"""The REST mirror (FastAPI) of the gRPC service, over the same EnvStore."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import Depends, FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from venv_manager.access import host_problem, origin_problem
from venv_manager.audit import DEFAULT_PAGE
from venv_manager.envs import BuildFailed, EnvInUse, EnvNotFound, EnvStore
from venv_manager.server import token_ok
from venv_manager.spec import EnvSpec, InvalidSpec


class SpecIn(BaseModel):
    python: str
    packages: list[str] = Field(default_factory=list)
    index_url: str | None = None
    extra_index_urls: list[str] = Field(default_factory=list)
    constraints: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)


class DeriveIn(BaseModel):
    add: list[str] = Field(default_factory=list)
    remove: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)


class CodeIn(BaseModel):
    code: str
    timeout_s: float = 30


def app(store: EnvStore, token: str | None, host: str = "127.0.0.1",
        allowed_hosts: tuple[str, ...] = (), allowed_origins: tuple[str, ...] = ()) -> FastAPI:
    """The REST app. `host`: the address it is bound to; a request's Host must name it, a
    loopback name or one of `allowed_hosts`, and its Origin (if any) be in `allowed_origins`
    (access.py says why)."""
    api = FastAPI(title="venv_manager", version="1")

    @api.middleware("http")
    async def check_host_and_origin(request: Request, call_next):
        problem = (host_problem(request.headers.get("host"), host, allowed_hosts)
                   or origin_problem(request.headers.get("origin"), allowed_origins))
        if problem:  # before any route, health included: a page learns nothing here
            return JSONResponse({"detail": problem}, status_code=403)
        return await call_next(request)

    def auth(authorization: str | None = Header(default=None)) -> None:
        if not token_ok(authorization, token):
            raise HTTPException(401, "missing or wrong token: send 'Authorization: Bearer <token>'")

    def call(fn, *args):
        try:
            return fn(*args)
        except InvalidSpec as e:
            raise HTTPException(422, str(e)) from None
        except EnvNotFound as e:
            raise HTTPException(404, str(e)) from None
        except (EnvInUse, BuildFailed) as e:
            raise HTTPException(409, str(e)) from None

    guarded = [Depends(auth)]

    @api.get("/healthz")
    def healthz() -> dict:
        return {"status": "SERVING"}

    @api.post("/v1/envs", dependencies=guarded)
    def ensure_env(spec: SpecIn) -> dict:
        return asdict(call(lambda: store.ensure(EnvSpec.create(**spec.model_dump()))))

    @api.get("/v1/envs", dependencies=guarded)
    def list_envs() -> list[dict]:
        return [asdict(e) for e in store.list()]

    @api.get("/v1/envs/{env_id}", dependencies=guarded)
    def get_env(env_id: str) -> dict:
        return asdict(call(store.get, env_id))

    @api.delete("/v1/envs/{env_id}", dependencies=guarded)
    def delete_env(env_id: str) -> dict:
        call(store.delete, env_id)
        return {}

    @api.get("/v1/envs/{env_id}/lock", dependencies=guarded)
    def export_lock(env_id: str) -> dict:
        return {"env_id": env_id, "requirements": call(store.export_lock, env_id)}

    @api.post("/v1/envs/{env_id}/derive", dependencies=guarded)
    def derive_env(env_id: str, body: DeriveIn) -> dict:
        def derive():
            base = EnvSpec.create(**store.get(env_id).spec, labels=body.labels)
            return store.ensure(base.with_packages(body.add, body.remove))

        return asdict(call(derive))

    @api.post("/v1/envs/{env_id}/run", dependencies=guarded)
    def run_code(env_id: str, body: CodeIn) -> dict:
        return asdict(call(store.run_code, env_id, body.code, body.timeout_s))

    @api.post("/v1/cleanup", dependencies=guarded)
    def cleanup(idle_seconds: float) -> dict:
        return {"removed": call(store.cleanup, idle_seconds)}

    @api.get("/v1/history", dependencies=guarded)
    def history(env_id: str | None = None, label: str | None = None, status: str | None = None,
                page_size: int = DEFAULT_PAGE, before_id: int | None = None) -> dict:
        pair = None
        if label is not None:
            key, eq, value = label.partition("=")
            if not eq or not key:
                raise HTTPException(422, f"label {label!r}: expected KEY=VALUE")
            pair = (key, value)
        ops, next_before_id = call(store.audit.history, env_id, pair, status, page_size,
                                   before_id)
        return {"operations": ops, "next_before_id": next_before_id}

    return api
