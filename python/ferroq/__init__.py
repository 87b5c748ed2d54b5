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
from .context import Retry, TaskContext, current_task
from .events import Event, EventFollower
from .frames import FrameSummary
from .handle import TaskHandle
from .listen import listener
from .records import TaskRecord
from .queue import (
    ExternalTask,
    Queue,
    QueueOptions,
    ShardCheck,
    WorkerRecord,
    default_queue,
    set_default_queue,
)
from .resilience import RateLimit, with_resilience
from .resources import default_probe, gpu_probe
from .scheduler import CleanupIntervals, QueueScheduler
from .task import TaskFunction, discover, task

__all__ = [
    "AlreadyFinishedError",
    "Backoff",
    "CleanupIntervals",
    "CorruptStoreError",
    "DuplicateKeyError",
    "Event",
    "EventFollower",
    "ExternalTask",
    "FerroqError",
    "FrameSummary",
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
    "Retry",
    "SerializationError",
    "ShardCheck",
    "ShardMismatchError",
    "StoreError",
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
    "WorkerRecord",
    "current_task",
    "default_probe",
    "default_queue",
    "discover",
    "gpu_probe",
    "listener",
    "set_default_queue",
    "task",
    "with_resilience",
]
