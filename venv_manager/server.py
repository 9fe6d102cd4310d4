"""The gRPC service (health checking and reflection included) over one EnvStore, and the
loopback/token rules shared with the REST mirror (rest.py)."""

from __future__ import annotations

import hmac
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from venv_manager.access import is_loopback
from venv_manager.audit import DEFAULT_PAGE
from venv_manager.envs import BuildFailed, Env, EnvInUse, EnvNotFound, EnvStore
from venv_manager.proto import venv_manager_pb2 as pb
from venv_manager.proto import venv_manager_pb2_grpc as pb_grpc
from venv_manager.spec import EnvSpec, InvalidSpec

SERVICE = "wtb.venv.v1.VenvManager"


def check_listen(host: str, token: str | None) -> None:
    if not is_loopback(host) and not token:
        raise SystemExit(f"refusing to listen on {host} without a token (--no-token): anyone "
                         "who can reach it could build envs and run code; drop --no-token, or "
                         "listen on 127.0.0.1")


def token_ok(presented: str | None, token: str | None) -> bool:
    if not token:
        return True
    # As bytes: compare_digest raises TypeError on a str with non-ASCII characters, which an
    # HTTP header may hold (a 500 instead of a 401).
    return presented is not None and hmac.compare_digest(
        presented.encode("utf-8", "surrogatepass"), f"Bearer {token}".encode())


class _TokenInterceptor(grpc.ServerInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

        def deny(request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or wrong token: send metadata 'authorization: Bearer <token>'")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        if details.method.startswith(("/grpc.health.", "/grpc.reflection.")):
            return continuation(details)
        presented = dict(details.invocation_metadata).get("authorization")
        return continuation(details) if token_ok(presented, self.token) else self._deny


def env_message(env: Env) -> pb.Env:
    return pb.Env(env_id=env.env_id, python_path=env.python_path,
                  python_version=env.python_version, lock=env.lock, status=env.status,
                  created_at=env.created_at, last_used_at=env.last_used_at,
                  size_bytes=env.size_bytes, labels=env.labels)


def spec_of(request: pb.EnvSpec) -> EnvSpec:
    return EnvSpec.create(request.python, list(request.packages), request.index_url or None,
                          list(request.extra_index_urls), list(request.constraints),
                          dict(request.labels))


def _errors(method):
    """Store errors -> gRPC status codes, with the store's message (it names the culprit)."""

    def wrapped(self, request, context):
        try:
            return method(self, request, context)
        except InvalidSpec as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except EnvNotFound as e:
            context.abort(grpc.StatusCode.NOT_FOUND, str(e))
        except EnvInUse as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
        except BuildFailed as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))

    return wrapped


class VenvManagerServicer(pb_grpc.VenvManagerServicer):
    def __init__(self, store: EnvStore) -> None:
        self.store = store

    @_errors
    def EnsureEnv(self, request, context):
        return env_message(self.store.ensure(spec_of(request)))

    @_errors
    def GetEnv(self, request, context):
        return env_message(self.store.get(request.env_id))

    @_errors
    def ListEnvs(self, request, context):
        return pb.ListEnvsResponse(envs=[env_message(e) for e in self.store.list()])

    @_errors
    def DeleteEnv(self, request, context):
        self.store.delete(request.env_id)
        return pb.DeleteEnvResponse()

    @_errors
    def ExportLock(self, request, context):
        return pb.Lock(env_id=request.env_id, requirements=self.store.export_lock(request.env_id))

    @_errors
    def DeriveEnv(self, request, context):
        base = EnvSpec.create(**self.store.get(request.base_env_id).spec,
                              labels=dict(request.labels))
        return env_message(self.store.ensure(base.with_packages(request.add, request.remove)))

    @_errors
    def RunCode(self, request, context):
        r = self.store.run_code(request.env_id, request.code, request.timeout_s or 30)
        return pb.RunCodeResponse(stdout=r.stdout, stderr=r.stderr, exit_code=r.exit_code,
                                  timed_out=r.timed_out)

    @_errors
    def Cleanup(self, request, context):
        return pb.CleanupResponse(removed=self.store.cleanup(request.idle_seconds))

    @_errors
    def History(self, request, context):
        label = (request.label_key, request.label_value) if request.label_key else None
        ops, next_before_id = self.store.audit.history(
            request.env_id or None, label, request.status or None,
            request.page_size or DEFAULT_PAGE, request.before_id or None)
        return pb.HistoryResponse(
            operations=[pb.Operation(
                id=o["id"], at=o["at"], operation=o["operation"], env_id=o["env_id"] or "",
                labels=o["labels"], status=o["status"], stdout=o["stdout"], stderr=o["stderr"],
                exit_code=o["exit_code"] or 0, duration_s=o["duration_s"],
                stdout_sha256=o["stdout_sha256"] or "", stdout_bytes=o["stdout_bytes"] or 0,
                stderr_sha256=o["stderr_sha256"] or "", stderr_bytes=o["stderr_bytes"] or 0)
                for o in ops],
            next_before_id=next_before_id,
        )


def grpc_server(
    store: EnvStore, host: str, port: int, token: str | None
) -> tuple[grpc.Server, int]:
    """A started server and the port it got (port 0 picks a free one)."""
    interceptors = [_TokenInterceptor(token)] if token else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=interceptors)
    pb_grpc.add_VenvManagerServicer_to_server(VenvManagerServicer(store), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        [SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server, bound
