"""ferroq: a persistent task queue for Python with a Rust core.

Tasks live in SQLite files (no server to run), survive crashes and restarts,
and run on worker threads::

    from ferroq import Queue, QueueScheduler

    queue = Queue("tasks.db")

    @queue.task(retries=3)
    def add(a: int, b: int) -> int:
        return a + b

    with QueueScheduler(queue):
        print(add.send(2, 3).result(timeout=10))
"""

from ._core import TokenBucket
from ._core import __version__ as __version__
from ._errors import (
    AlreadyFinishedError,
    CorruptStoreError,
    DuplicateKeyError,
    FerroqError,
    InvalidArgumentError,
    InvalidTransitionError,
    LeaseLostError,
    NotAStoreError,
    PayloadTooLargeError,
    QueueFullError,
    QueuePausedError,
    SerializationError,
    ShardMismatchError,
    StoreError,
    StoreInUseError,
    StorePermissionError,
    StoreUnavailableError,
    TaskCancelledError,
    TaskExpiredError,
    TaskFailedError,
    TaskNotFoundError,
    TaskTimeoutError,
    UnknownTaskError,
)
from .backoff import Backoff
from .context import Fail, Retry, TaskContext, current_task
from .events import Event, EventFollower
from .flow import (
    Chain,
    Chord,
    FlowHandle,
    Group,
    GroupFailedError,
    GroupHandle,
    Signature,
    chain,
    chord,
    group,
)
from .frames import FrameSummary
from .handle import TaskHandle
from .listen import listener
from .periodic import ScheduleRecord
from .queue import (
    ExternalTask,
    Queue,
    QueueOptions,
    ShardCheck,
    WorkerRecord,
    default_queue,
    set_default_queue,
)
from .records import TaskRecord
from .reshard import ReshardReport, reshard
from .resilience import RateLimit, is_retryable, is_transient, with_resilience
from .resources import default_probe, gpu_probe
from .scheduler import CleanupIntervals, QueueScheduler
from .task import TaskFunction, discover, periodic, task
from .waiting import (
    ALL_COMPLETED,
    FIRST_COMPLETED,
    FIRST_EXCEPTION,
    WaitResult,
    as_completed,
    wait,
)

__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "AlreadyFinishedError",
    "Backoff",
    "Chain",
    "Chord",
    "CleanupIntervals",
    "CorruptStoreError",
    "DuplicateKeyError",
    "Event",
    "EventFollower",
    "ExternalTask",
    "Fail",
    "FerroqError",
    "FlowHandle",
    "FrameSummary",
    "Group",
    "GroupFailedError",
    "GroupHandle",
    "InvalidArgumentError",
    "InvalidTransitionError",
    "LeaseLostError",
    "NotAStoreError",
    "PayloadTooLargeError",
    "Queue",
    "QueueFullError",
    "QueuePausedError",
    "QueueOptions",
    "QueueScheduler",
    "RateLimit",
    "ReshardReport",
    "Retry",
    "ScheduleRecord",
    "SerializationError",
    "ShardCheck",
    "Signature",
    "ShardMismatchError",
    "StoreError",
    "StoreInUseError",
    "StorePermissionError",
    "StoreUnavailableError",
    "TaskCancelledError",
    "TaskContext",
    "TaskExpiredError",
    "TaskFailedError",
    "TaskFunction",
    "TaskHandle",
    "TaskNotFoundError",
    "TaskRecord",
    "TaskTimeoutError",
    "TokenBucket",
    "UnknownTaskError",
    "WaitResult",
    "WorkerRecord",
    "chain",
    "chord",
    "current_task",
    "default_probe",
    "as_completed",
    "default_queue",
    "discover",
    "gpu_probe",
    "group",
    "is_retryable",
    "is_transient",
    "listener",
    "periodic",
    "reshard",
    "set_default_queue",
    "task",
    "wait",
    "with_resilience",
]
