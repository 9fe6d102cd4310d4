"""The REST mirror (FastAPI) of the gRPC service, over the same EnvStore."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Request
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


def _store(request: Request) -> EnvStore:
    """The EnvStore of the app serving the request (app() puts it there)."""
    return request.app.state.store


def _auth(request: Request, authorization: str | None = Header(default=None)) -> None:
    """Refuses a request without the app's token (none set: every request passes)."""
    if not token_ok(authorization, request.app.state.token):
        raise HTTPException(401, "missing or wrong token: send 'Authorization: Bearer <token>'")


def _call(fn: Any, *args: Any) -> Any:
    """`fn(*args)`, with the store's errors as the HTTP status that says what went wrong."""
    try:
        return fn(*args)
    except InvalidSpec as e:
        raise HTTPException(422, str(e)) from None
    except EnvNotFound as e:
        raise HTTPException(404, str(e)) from None
    except (EnvInUse, BuildFailed) as e:
        raise HTTPException(409, str(e)) from None


Store = Annotated[EnvStore, Depends(_store)]
health = APIRouter()  # open to anyone the Host and Origin check lets through
guarded = APIRouter(dependencies=[Depends(_auth)])  # everything else needs the token


@health.get("/healthz")
def healthz() -> dict:
    return {"status": "SERVING"}


@guarded.post("/v1/envs")
def ensure_env(spec: SpecIn, store: Store) -> dict:
    return asdict(_call(lambda: store.ensure(EnvSpec.create(**spec.model_dump()))))


@guarded.get("/v1/envs")
def list_envs(store: Store) -> list[dict]:
    return [asdict(e) for e in store.list()]


@guarded.get("/v1/envs/{env_id}")
def get_env(env_id: str, store: Store) -> dict:
    return asdict(_call(store.get, env_id))


@guarded.delete("/v1/envs/{env_id}")
def delete_env(env_id: str, store: Store) -> dict:
    _call(store.delete, env_id)
    return {}


@guarded.get("/v1/envs/{env_id}/lock")
def export_lock(env_id: str, store: Store) -> dict:
    return {"env_id": env_id, "requirements": _call(store.export_lock, env_id)}


@guarded.post("/v1/envs/{env_id}/derive")
def derive_env(env_id: str, body: DeriveIn, store: Store) -> dict:
    def derive():
        base = EnvSpec.create(**store.get(env_id).spec, labels=body.labels)
        return store.ensure(base.with_packages(body.add, body.remove))

    return asdict(_call(derive))


@guarded.post("/v1/envs/{env_id}/run")
def run_code(env_id: str, body: CodeIn, store: Store) -> dict:
    return asdict(_call(store.run_code, env_id, body.code, body.timeout_s))


@guarded.post("/v1/cleanup")
def cleanup(idle_seconds: float, store: Store) -> dict:
    return {"removed": _call(store.cleanup, idle_seconds)}


@guarded.get("/v1/history")
def history(store: Store, env_id: str | None = None, label: str | None = None,
            status: str | None = None, page_size: int = DEFAULT_PAGE,
            before_id: int | None = None) -> dict:
    pair = None
    if label is not None:
        key, eq, value = label.partition("=")
        if not eq or not key:
            raise HTTPException(422, f"label {label!r}: expected KEY=VALUE")
        pair = (key, value)
    ops, next_before_id = _call(store.audit.history, env_id, pair, status, page_size,
                                before_id)
    return {"operations": ops, "next_before_id": next_before_id}


def app(store: EnvStore, token: str | None, host: str = "127.0.0.1",
        allowed_hosts: tuple[str, ...] = (), allowed_origins: tuple[str, ...] = ()) -> FastAPI:
    """The REST app. `host`: the address it is bound to; a request's Host must name it, a
    loopback name or one of `allowed_hosts`, and its Origin (if any) be in `allowed_origins`
    (access.py says why)."""
    api = FastAPI(title="venv_manager", version="1")
    api.state.store, api.state.token = store, token  # what _store and _auth read

    @api.middleware("http")
    async def check_host_and_origin(request: Request, call_next):
        problem = (host_problem(request.headers.get("host"), host, allowed_hosts)
                   or origin_problem(request.headers.get("origin"), allowed_origins))
        if problem:  # before any route, health included: a page learns nothing here
            return JSONResponse({"detail": problem}, status_code=403)
        return await call_next(request)

    api.include_router(health)
    api.include_router(guarded)
    return api
