"""``QtScheduler``: a queue's results, callbacks and status changes
delivered on the GUI thread of a Qt application, as Qt signals.

Needs PySide6 (``pip install 'ferroq[qt]'``); this module is not imported
by ``import ferroq``. Tasks run where they always do (worker threads of
the :class:`~ferroq.QueueScheduler` it starts, or workers elsewhere); only
what the GUI must see of them crosses to the GUI thread, through Qt's
event loop, so a slot may touch widgets directly.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from PySide6.QtCore import QCoreApplication, QObject, Qt, Signal, Slot

from ._errors import FerroqError, InvalidArgumentError
from .events import Event, EventFollower
from .handle import TaskHandle
from .receive import ReceiveLoop, Watch, record_delivered, run_watches
from .scheduler import QueueScheduler
from .task_function import TaskCall, TaskFunction

if TYPE_CHECKING:
    from . import _core
    from .queue import Queue

__all__ = ["QtScheduler"]

Job = Callable[[], None]


class _Relay(QObject):
    """Lives on the GUI thread and runs there what any thread posts."""

    posted = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        # Queued even when posted from the GUI thread itself: a job never
        # runs inside the code that posted it.
        self.posted.connect(self._run, Qt.ConnectionType.QueuedConnection)

    def post(self, job: Job) -> None:
        """Runs ``job()`` on the GUI thread, from its event loop."""
        self.posted.emit(job)

    @Slot(object)
    def _run(self, job: Job) -> None:
        job()


class _GuiReceiveLoop(ReceiveLoop):
    """The receive loop of a :class:`QtScheduler`: finished tasks are looked
    up (and their results decoded) on the loop's thread; their signals and
    callbacks run on the GUI thread; deliveries are recorded back on the
    loop's thread, so the GUI never waits on a store write."""

    def __init__(self, store: _core.Store, deliver: Callable[[Any, list[Watch]], None]) -> None:
        super().__init__(store)
        self._deliver = deliver
        self._ran: list[_core.Task] = []
        self._ran_lock = threading.Lock()

    def dispatch(self, task: _core.Task, waiting: list[Watch]) -> bool:
        """Hands the finished task to the GUI thread (see :class:`QtScheduler`)."""
        self._deliver(task, waiting)
        return False

    def ran(self, task: _core.Task) -> None:
        """Called on the GUI thread once ``task``'s callbacks ran there."""
        with self._ran_lock:
            self._ran.append(task)

    def tick(self) -> int:
        """Records the deliveries made since the last tick, then one step."""
        with self._ran_lock:
            ran, self._ran = self._ran, []
        record_delivered(self.store, ran)
        return super().tick()


class QtScheduler(QObject):
    """Runs a queue's tasks for a Qt application and reports on them on the
    GUI thread.

    Create it on the GUI thread after the ``QApplication``, then
    :meth:`start` it (it stops by itself when the application quits, or
    with :meth:`stop`). With ``run_tasks=True`` (the default) it starts a
    :class:`~ferroq.QueueScheduler` on ``queue`` with ``scheduler_options``
    (``concurrency=``, ``queues=``, ``mode=``...), available as
    :attr:`scheduler`; with ``run_tasks=False`` tasks run elsewhere (a
    ``ferroq worker``) and this object only reports.

    Tasks sent with :meth:`send` (or followed with :meth:`watch`) are
    reported when they finish: :attr:`finished` with the handle, then
    :attr:`succeeded` with the handle and the result, or :attr:`failed`
    with the handle and the exception ``handle.result()`` would raise
    (for failed, cancelled and expired tasks); then the ``callback`` given
    to :meth:`send` is called with the handle — all on the GUI thread.
    A callback that ran is recorded on the task as for
    :attr:`Queue.callback_threads` callbacks (the ``delivered`` event,
    and ``callback_delivered_at`` in its metadata).

    :attr:`status_changed` carries ``(task_id, old, new)`` for every move of
    every task in the store: those of this scheduler's workers at once,
    and, from the event feed, those made anywhere else.
    """

    #: ``(task_id, old_status, new_status)``, for every move in the store.
    status_changed = Signal(object, str, str)
    #: ``(handle)``: a task sent or watched here has finished.
    finished = Signal(object)
    #: ``(handle, result)``: it finished ``done``, with this result.
    succeeded = Signal(object, object)
    #: ``(handle, exception)``: it failed, was cancelled or expired.
    failed = Signal(object, object)

    def __init__(
        self,
        queue: Queue,
        *,
        run_tasks: bool = True,
        parent: Optional[QObject] = None,
        **scheduler_options: Any,
    ) -> None:
        app = QCoreApplication.instance()
        if app is None:
            raise InvalidArgumentError(
                "QtScheduler needs a Qt application: create the QApplication first"
            )
        super().__init__(parent)
        #: The queue reported on.
        self.queue = queue
        self._relay = _Relay()
        self._relay.moveToThread(app.thread())
        #: The scheduler running tasks in this process (None with ``run_tasks=False``).
        self.scheduler: Optional[QueueScheduler] = None
        if run_tasks:
            self.scheduler = QueueScheduler(queue, **scheduler_options)
            self.scheduler.on_status_change(self._moved)
        elif scheduler_options:
            raise InvalidArgumentError(
                f"scheduler options {sorted(scheduler_options)} need run_tasks=True"
            )
        self._receiver = _GuiReceiveLoop(queue._store, self._post_finished)
        self._follower: Optional[EventFollower] = None
        self._started = False
        self._app = app

    # -- sending and watching -------------------------------------------------

    def send(
        self,
        task: Union[TaskFunction[Any, Any], TaskCall[Any, Any], str],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> TaskHandle[Any]:
        """Sends like :meth:`Queue.send` (both forms), and reports the task
        when it finishes; ``callback=`` is called with the handle on the
        GUI thread."""
        callback = kwargs.pop("callback", None)
        handle = self.queue.send(task, *args, **kwargs)
        self.watch(handle, callback)
        return handle

    def watch(
        self, handle: TaskHandle[Any], callback: Optional[Callable[[TaskHandle[Any]], Any]] = None
    ) -> TaskHandle[Any]:
        """Reports a task sent some other way when it finishes (signals, and
        ``callback(handle)`` on the GUI thread); returns ``handle``."""
        if callback is not None and not callable(callback):
            raise InvalidArgumentError(f"callback must be callable, got {callback!r}")
        if callback is None:
            self._receiver.watch(handle, _nothing, counts=False)
        else:
            self._receiver.watch(handle, callback)
        return handle

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> QtScheduler:
        """Starts reporting (and running tasks, with ``run_tasks``); returns self."""
        if self._started:
            raise InvalidArgumentError("QtScheduler already started")
        self._started = True
        self._app.aboutToQuit.connect(self.stop)
        self._receiver.start()
        if self.scheduler is not None:
            self.scheduler.start()
        else:
            self._follower = EventFollower(
                self.queue._store, None, self._feed_event, start_at="now"
            )
            self._follower.start()
        return self

    @Slot()
    def stop(self, grace: float = 10.0) -> None:
        """Stops: running tasks get ``grace`` seconds to finish (see
        :meth:`QueueScheduler.stop`), then results already in are
        reported. Called by itself when the application quits."""
        if not self._started:
            return
        self._started = False
        self._app.aboutToQuit.disconnect(self.stop)
        if self.scheduler is not None:
            self.scheduler.stop(grace)
        if self._follower is not None:
            self._follower.stop()
            self._follower = None
        self._receiver.stop()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._started

    # -- what crosses to the GUI thread ----------------------------------------

    def _moved(self, task_id: int, old: str, new: str) -> None:
        """A status hook (any thread): re-emitted on the GUI thread."""
        self._relay.post(lambda: self.status_changed.emit(task_id, old, new))

    def _feed_event(self, event: Event) -> None:
        if event.old is None or event.new is None or event.old == event.new:
            return  # sends, purges and cancel requests are not moves
        self._moved(event.task_id, event.old, event.new)

    def _post_finished(self, task: _core.Task, waiting: list[Watch]) -> None:
        """On the receive loop's thread: decodes the outcome, then has the
        GUI thread emit the signals and run the callbacks."""
        handle = waiting[0].handle
        value: Any = None
        error: Optional[BaseException] = None
        if isinstance(handle, TaskHandle):
            try:
                value = handle.result(timeout=0)
            except Exception as e:
                error = e
        else:  # pragma: no cover - only TaskHandles are watched here
            error = FerroqError(f"task {task.id} has no handle")

        def on_gui() -> None:
            self.finished.emit(handle)
            if error is None:
                self.succeeded.emit(handle, value)
            else:
                self.failed.emit(handle, error)
            run_watches(waiting)
            if any(w.counts for w in waiting):
                self._receiver.ran(task)

        self._relay.post(on_gui)


def _nothing(handle: Any) -> None:
    """The callback of a task watched for its signals only."""
