from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnvSpec(_message.Message):
    __slots__ = ("python", "packages", "index_url", "extra_index_urls", "constraints", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PYTHON_FIELD_NUMBER: _ClassVar[int]
    PACKAGES_FIELD_NUMBER: _ClassVar[int]
    INDEX_URL_FIELD_NUMBER: _ClassVar[int]
    EXTRA_INDEX_URLS_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    python: str
    packages: _containers.RepeatedScalarFieldContainer[str]
    index_url: str
    extra_index_urls: _containers.RepeatedScalarFieldContainer[str]
    constraints: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, python: _Optional[str] = ..., packages: _Optional[_Iterable[str]] = ..., index_url: _Optional[str] = ..., extra_index_urls: _Optional[_Iterable[str]] = ..., constraints: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Env(_message.Message):
    __slots__ = ("env_id", "python_path", "python_version", "lock", "status", "created_at", "last_used_at", "size_bytes", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    PYTHON_PATH_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    LOCK_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    env_id: str
    python_path: str
    python_version: str
    lock: _containers.RepeatedScalarFieldContainer[str]
    status: str
    created_at: str
    last_used_at: str
    size_bytes: int
    labels: _containers.ScalarMap[str, str]
    def __init__(self, env_id: _Optional[str] = ..., python_path: _Optional[str] = ..., python_version: _Optional[str] = ..., lock: _Optional[_Iterable[str]] = ..., status: _Optional[str] = ..., created_at: _Optional[str] = ..., last_used_at: _Optional[str] = ..., size_bytes: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EnvRef(_message.Message):
    __slots__ = ("env_id",)
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    env_id: str
    def __init__(self, env_id: _Optional[str] = ...) -> None: ...

class ListEnvsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListEnvsResponse(_message.Message):
    __slots__ = ("envs",)
    ENVS_FIELD_NUMBER: _ClassVar[int]
    envs: _containers.RepeatedCompositeFieldContainer[Env]
    def __init__(self, envs: _Optional[_Iterable[_Union[Env, _Mapping]]] = ...) -> None: ...

class DeleteEnvResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Lock(_message.Message):
    __slots__ = ("env_id", "requirements")
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    REQUIREMENTS_FIELD_NUMBER: _ClassVar[int]
    env_id: str
    requirements: str
    def __init__(self, env_id: _Optional[str] = ..., requirements: _Optional[str] = ...) -> None: ...

class DeriveEnvRequest(_message.Message):
    __slots__ = ("base_env_id", "add", "remove", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    BASE_ENV_ID_FIELD_NUMBER: _ClassVar[int]
    ADD_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    base_env_id: str
    add: _containers.RepeatedScalarFieldContainer[str]
    remove: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    def __init__(self, base_env_id: _Optional[str] = ..., add: _Optional[_Iterable[str]] = ..., remove: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RunCodeRequest(_message.Message):
    __slots__ = ("env_id", "code", "timeout_s")
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    env_id: str
    code: str
    timeout_s: float
    def __init__(self, env_id: _Optional[str] = ..., code: _Optional[str] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class RunCodeResponse(_message.Message):
    __slots__ = ("stdout", "stderr", "exit_code", "timed_out")
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    def __init__(self, stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., exit_code: _Optional[int] = ..., timed_out: _Optional[bool] = ...) -> None: ...

class CleanupRequest(_message.Message):
    __slots__ = ("idle_seconds",)
    IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    idle_seconds: float
    def __init__(self, idle_seconds: _Optional[float] = ...) -> None: ...

class CleanupResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ("env_id", "label_key", "label_value", "status", "page_size", "before_id")
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_KEY_FIELD_NUMBER: _ClassVar[int]
    LABEL_VALUE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_ID_FIELD_NUMBER: _ClassVar[int]
    env_id: str
    label_key: str
    label_value: str
    status: str
    page_size: int
    before_id: int
    def __init__(self, env_id: _Optional[str] = ..., label_key: _Optional[str] = ..., label_value: _Optional[str] = ..., status: _Optional[str] = ..., page_size: _Optional[int] = ..., before_id: _Optional[int] = ...) -> None: ...

class Operation(_message.Message):
    __slots__ = ("id", "at", "operation", "env_id", "labels", "status", "stdout", "stderr", "exit_code", "duration_s", "stdout_sha256", "stdout_bytes", "stderr_sha256", "stderr_bytes")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    ENV_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STDOUT_FIELD_NUMBER: _ClassVar[int]
    STDERR_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    STDOUT_SHA256_FIELD_NUMBER: _ClassVar[int]
    STDOUT_BYTES_FIELD_NUMBER: _ClassVar[int]
    STDERR_SHA256_FIELD_NUMBER: _ClassVar[int]
    STDERR_BYTES_FIELD_NUMBER: _ClassVar[int]
    id: int
    at: str
    operation: str
    env_id: str
    labels: _containers.ScalarMap[str, str]
    status: str
    stdout: str
    stderr: str
    exit_code: int
    duration_s: float
    stdout_sha256: str
    stdout_bytes: int
    stderr_sha256: str
    stderr_bytes: int
    def __init__(self, id: _Optional[int] = ..., at: _Optional[str] = ..., operation: _Optional[str] = ..., env_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., status: _Optional[str] = ..., stdout: _Optional[str] = ..., stderr: _Optional[str] = ..., exit_code: _Optional[int] = ..., duration_s: _Optional[float] = ..., stdout_sha256: _Optional[str] = ..., stdout_bytes: _Optional[int] = ..., stderr_sha256: _Optional[str] = ..., stderr_bytes: _Optional[int] = ...) -> None: ...

class HistoryResponse(_message.Message):
    __slots__ = ("operations", "next_before_id")
    OPERATIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_BEFORE_ID_FIELD_NUMBER: _ClassVar[int]
    operations: _containers.RepeatedCompositeFieldContainer[Operation]
    next_before_id: int
    def __init__(self, operations: _Optional[_Iterable[_Union[Operation, _Mapping]]] = ..., next_before_id: _Optional[int] = ...) -> None: ...
