from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Consistency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSISTENCY_UNSPECIFIED: _ClassVar[Consistency]
    CONSISTENCY_APPLICATION: _ClassVar[Consistency]
    CONSISTENCY_FILE_SYSTEM: _ClassVar[Consistency]
    CONSISTENCY_CRASH: _ClassVar[Consistency]
CONSISTENCY_UNSPECIFIED: Consistency
CONSISTENCY_APPLICATION: Consistency
CONSISTENCY_FILE_SYSTEM: Consistency
CONSISTENCY_CRASH: Consistency

class Filesystem(_message.Message):
    __slots__ = ("mount_point", "device", "fs_type", "frozen", "eligible", "reason")
    MOUNT_POINT_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    FS_TYPE_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    ELIGIBLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    mount_point: str
    device: str
    fs_type: str
    frozen: bool
    eligible: bool
    reason: str
    def __init__(self, mount_point: _Optional[str] = ..., device: _Optional[str] = ..., fs_type: _Optional[str] = ..., frozen: bool = ..., eligible: bool = ..., reason: _Optional[str] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("agent_version", "api_version", "os", "os_release", "kernel", "hostname", "filesystems", "hooks", "capabilities", "quiescer", "max_freeze_timeout_ms")
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    OS_FIELD_NUMBER: _ClassVar[int]
    OS_RELEASE_FIELD_NUMBER: _ClassVar[int]
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    FILESYSTEMS_FIELD_NUMBER: _ClassVar[int]
    HOOKS_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    QUIESCER_FIELD_NUMBER: _ClassVar[int]
    MAX_FREEZE_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    agent_version: str
    api_version: int
    os: str
    os_release: str
    kernel: str
    hostname: str
    filesystems: _containers.RepeatedCompositeFieldContainer[Filesystem]
    hooks: _containers.RepeatedScalarFieldContainer[str]
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    quiescer: str
    max_freeze_timeout_ms: int
    def __init__(self, agent_version: _Optional[str] = ..., api_version: _Optional[int] = ..., os: _Optional[str] = ..., os_release: _Optional[str] = ..., kernel: _Optional[str] = ..., hostname: _Optional[str] = ..., filesystems: _Optional[_Iterable[_Union[Filesystem, _Mapping]]] = ..., hooks: _Optional[_Iterable[str]] = ..., capabilities: _Optional[_Iterable[str]] = ..., quiescer: _Optional[str] = ..., max_freeze_timeout_ms: _Optional[int] = ...) -> None: ...

class FreezeRequest(_message.Message):
    __slots__ = ("mount_points", "timeout_ms", "job_id")
    MOUNT_POINTS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    mount_points: _containers.RepeatedScalarFieldContainer[str]
    timeout_ms: int
    job_id: str
    def __init__(self, mount_points: _Optional[_Iterable[str]] = ..., timeout_ms: _Optional[int] = ..., job_id: _Optional[str] = ...) -> None: ...

class SkippedFilesystem(_message.Message):
    __slots__ = ("mount_point", "reason")
    MOUNT_POINT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    mount_point: str
    reason: str
    def __init__(self, mount_point: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class HookResult(_message.Message):
    __slots__ = ("name", "action", "exit_code", "duration_ms", "timed_out", "output")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    TIMED_OUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    action: str
    exit_code: int
    duration_ms: int
    timed_out: bool
    output: str
    def __init__(self, name: _Optional[str] = ..., action: _Optional[str] = ..., exit_code: _Optional[int] = ..., duration_ms: _Optional[int] = ..., timed_out: bool = ..., output: _Optional[str] = ...) -> None: ...

class FreezeResponse(_message.Message):
    __slots__ = ("token", "frozen", "skipped", "consistency", "hooks", "timeout_ms", "freeze_duration_ms")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    HOOKS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    FREEZE_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    token: str
    frozen: _containers.RepeatedScalarFieldContainer[str]
    skipped: _containers.RepeatedCompositeFieldContainer[SkippedFilesystem]
    consistency: Consistency
    hooks: _containers.RepeatedCompositeFieldContainer[HookResult]
    timeout_ms: int
    freeze_duration_ms: int
    def __init__(self, token: _Optional[str] = ..., frozen: _Optional[_Iterable[str]] = ..., skipped: _Optional[_Iterable[_Union[SkippedFilesystem, _Mapping]]] = ..., consistency: _Optional[_Union[Consistency, str]] = ..., hooks: _Optional[_Iterable[_Union[HookResult, _Mapping]]] = ..., timeout_ms: _Optional[int] = ..., freeze_duration_ms: _Optional[int] = ...) -> None: ...

class ThawRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class ThawResponse(_message.Message):
    __slots__ = ("thawed", "frozen_ms", "held", "auto_thawed", "hooks", "consistency", "thaw_errors", "guest_frozen_ms", "freeze_hooks_ms", "thaw_hooks_ms")
    THAWED_FIELD_NUMBER: _ClassVar[int]
    FROZEN_MS_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    AUTO_THAWED_FIELD_NUMBER: _ClassVar[int]
    HOOKS_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    THAW_ERRORS_FIELD_NUMBER: _ClassVar[int]
    GUEST_FROZEN_MS_FIELD_NUMBER: _ClassVar[int]
    FREEZE_HOOKS_MS_FIELD_NUMBER: _ClassVar[int]
    THAW_HOOKS_MS_FIELD_NUMBER: _ClassVar[int]
    thawed: _containers.RepeatedScalarFieldContainer[str]
    frozen_ms: int
    held: bool
    auto_thawed: bool
    hooks: _containers.RepeatedCompositeFieldContainer[HookResult]
    consistency: Consistency
    thaw_errors: _containers.RepeatedScalarFieldContainer[str]
    guest_frozen_ms: float
    freeze_hooks_ms: int
    thaw_hooks_ms: int
    def __init__(self, thawed: _Optional[_Iterable[str]] = ..., frozen_ms: _Optional[int] = ..., held: bool = ..., auto_thawed: bool = ..., hooks: _Optional[_Iterable[_Union[HookResult, _Mapping]]] = ..., consistency: _Optional[_Union[Consistency, str]] = ..., thaw_errors: _Optional[_Iterable[str]] = ..., guest_frozen_ms: _Optional[float] = ..., freeze_hooks_ms: _Optional[int] = ..., thaw_hooks_ms: _Optional[int] = ...) -> None: ...

class FreezeStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FreezeStatusResponse(_message.Message):
    __slots__ = ("frozen", "job_id", "frozen_mount_points", "frozen_for_ms", "timeout_ms", "last_end", "last_job_id")
    FROZEN_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROZEN_MOUNT_POINTS_FIELD_NUMBER: _ClassVar[int]
    FROZEN_FOR_MS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    LAST_END_FIELD_NUMBER: _ClassVar[int]
    LAST_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    frozen: bool
    job_id: str
    frozen_mount_points: _containers.RepeatedScalarFieldContainer[str]
    frozen_for_ms: int
    timeout_ms: int
    last_end: str
    last_job_id: str
    def __init__(self, frozen: bool = ..., job_id: _Optional[str] = ..., frozen_mount_points: _Optional[_Iterable[str]] = ..., frozen_for_ms: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., last_end: _Optional[str] = ..., last_job_id: _Optional[str] = ...) -> None: ...
