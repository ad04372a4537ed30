"""Where the lab's independent pieces run: in this process, or as tasks on a Ray cluster.

An :class:`Executor` runs one picklable function over a list of work items and hands back
the results **in the items' order**, whatever order they finish in, so a run's output does
not depend on the executor (:func:`in_order`). It calls ``on_done(index, result)`` once per
item as each one finishes (for progress) and turns an item whose *task itself* failed (a
crashed worker, a node that died, a function that could not be unpickled) into a result
with ``on_error(item, exc, traceback_text)``; errors raised by the work function are the
function's to catch (the lab's records them as a failed experiment).

* :class:`LocalExecutor` (``"local"``, the default): one item after the other, here.
* :class:`RayExecutor` (``"ray"``): one ``ray.remote`` task per item, 1 CPU each (and one
  GPU when asked). Without an address it starts a local Ray instance
  (``ray.init(num_cpus=...)``) and shuts it down at the end; with one (``"auto"``,
  ``"ray://host:10001"``, ``"host:6379"``) it connects to that cluster, whose every node
  must have deadrelu (same version) and its dependencies installed; a Ray already
  initialised in this process is used as it is and left running. Ray is the optional extra
  ``pip install 'deadrelu[ray]'``.

Executors are context managers: ``with make_executor("ray") as ex: ex.run(...)``.
"""

from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Generic, TypeVar

__all__ = [
    "EXECUTORS",
    "Executor",
    "ExecutorError",
    "LocalExecutor",
    "RayExecutor",
    "in_order",
    "make_executor",
]

log = logging.getLogger(__name__)

#: The executor names ``deadrelu lab --executor`` accepts.
EXECUTORS: tuple[str, ...] = ("local", "ray")

_RAY_MISSING = (
    "--executor ray needs Ray, which is not installed: pip install 'deadrelu[ray]' "
    "(or pip install 'ray>=2.9'); or run with --executor local"
)

Item = TypeVar("Item")
Result = TypeVar("Result")


class ExecutorError(RuntimeError):
    """An executor could not start: Ray missing, a cluster that cannot be reached."""


def in_order(done: Iterable[tuple[int, Result]], n: int) -> list[Result]:
    """The results of items ``0 .. n-1`` in item order, from ``(index, result)`` pairs given
    in any (completion) order.

    Raises ``ValueError`` naming the indices when one is missing, repeated or out of range,
    so a lost or doubled task can never shift results silently.
    """
    slots: dict[int, Result] = {}
    repeated: list[int] = []
    for i, r in done:
        if i in slots:
            repeated.append(i)
        slots[i] = r
    bad = sorted(i for i in slots if not 0 <= i < n)
    missing = [i for i in range(n) if i not in slots]
    if repeated or bad or missing:
        raise ValueError(
            f"executor results do not match its {n} items: missing {missing}, "
            f"repeated {sorted(repeated)}, out of range {bad}"
        )
    return [slots[i] for i in range(n)]


class Executor(Generic[Item, Result]):
    """Runs ``work(item)`` for every item; see the module docstring for the contract.

    Attributes:
        name: ``"local"`` or ``"ray"``.
        shares_filesystem: True when ``work`` runs in this process, so files it writes are
            where the caller expects them; False when it may run on another machine.
    """

    name = "executor"
    shares_filesystem = True

    def __enter__(self) -> Executor[Item, Result]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def describe(self) -> str:
        """Which executor, in words, for the report (``"ray (local instance, 2 CPUs)"``)."""
        return self.name

    def run(
        self,
        work: Callable[[Item], Result],
        items: Sequence[Item],
        *,
        on_done: Callable[[int, Result], None] | None = None,
        on_error: Callable[[Item, BaseException, str], Result] | None = None,
        gpu: bool = False,
    ) -> list[Result]:
        """``[work(item) for item in items]``, in item order.

        Args:
            work: a module-level (picklable) function of one item.
            items: the work items (picklable for a remote executor).
            on_done: called with ``(index, result)`` as each item finishes.
            on_error: ``(item, exception, traceback_text) -> result`` for an item whose
                task failed outside ``work`` (remote executors); None re-raises.
            gpu: each item needs a GPU (a remote executor reserves one per task).
        """
        raise NotImplementedError


class LocalExecutor(Executor[Item, Result]):
    """Every item in this process, one after the other (what ``deadrelu lab`` always did)."""

    name = "local"
    shares_filesystem = True

    def describe(self) -> str:
        return "local (this process)"

    def run(
        self,
        work: Callable[[Item], Result],
        items: Sequence[Item],
        *,
        on_done: Callable[[int, Result], None] | None = None,
        on_error: Callable[[Item, BaseException, str], Result] | None = None,
        gpu: bool = False,
    ) -> list[Result]:
        out: list[Result] = []
        for i, item in enumerate(items):
            result = work(item)
            out.append(result)
            if on_done is not None:
                on_done(i, result)
        return out


def import_ray() -> Any:
    """The ``ray`` module, or :class:`ExecutorError` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError(_RAY_MISSING) from exc
    return ray


class RayExecutor(Executor[Item, Result]):
    """One Ray task per item (1 CPU; 1 GPU each when ``gpu``).

    Args:
        address: the cluster to connect to (``ray.init(address=...)``); None starts a local
            Ray instance for the run and shuts it down afterwards. A Ray already initialised
            in this process is used whatever ``address`` says, and left running.
        num_cpus: CPUs of the local instance (None: every CPU of this machine). Only for a
            local instance: a cluster has the size it has.
        max_retries: times Ray reruns a task whose worker or node died (Ray's default, 3:
            a preempted node; a piece that crashes its worker every time fails after
            ``1 + max_retries`` tries). An exception inside the piece is never retried.
    """

    name = "ray"
    shares_filesystem = False

    def __init__(
        self, address: str | None = None, num_cpus: int | None = None, max_retries: int = 3
    ) -> None:
        if address is not None and num_cpus is not None:
            raise ValueError(
                "num_cpus sizes a local Ray instance; with an address the cluster's size is "
                "its own (drop --num-cpus or --address)"
            )
        if num_cpus is not None and num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {num_cpus}")
        self.address = address
        self.num_cpus = num_cpus
        self.max_retries = max_retries
        self._started = False
        self._description = "ray (not started)"

    def __enter__(self) -> RayExecutor[Item, Result]:
        ray = import_ray()
        if ray.is_initialized():
            where = "an already initialised Ray"
        elif self.address is not None:
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ExecutorError(
                    f"cannot connect to the Ray cluster at {self.address!r}: {exc}; start one "
                    "(`ray start --head`) or leave out --address for a local Ray instance"
                ) from exc
            self._started = True
            where = f"cluster at {self.address}"
        else:
            ray.init(
                num_cpus=self.num_cpus,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
            self._started = True
            where = "local instance"
        cpus = int(ray.cluster_resources().get("CPU", 0))
        self._description = f"ray ({where}, {cpus} CPUs)"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._started:
            import_ray().shutdown()
            self._started = False

    def describe(self) -> str:
        """``"ray (local instance, 2 CPUs)"``: where, and the CPUs the cluster had when
        this executor was entered (kept after it is left, for the report)."""
        return self._description

    def run(
        self,
        work: Callable[[Item], Result],
        items: Sequence[Item],
        *,
        on_done: Callable[[int, Result], None] | None = None,
        on_error: Callable[[Item, BaseException, str], Result] | None = None,
        gpu: bool = False,
    ) -> list[Result]:
        ray = import_ray()
        if not ray.is_initialized():
            raise ExecutorError("RayExecutor.run outside its `with` block: Ray is not started")
        task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=self.max_retries)(work)
        index = {task.remote(item): i for i, item in enumerate(items)}
        pending = list(index)
        done: list[tuple[int, Result]] = []
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    i = index[ref]
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        if on_error is None:
                            raise
                        result = on_error(items[i], exc, remote_traceback(exc))
                    done.append((i, result))
                    if on_done is not None:
                        on_done(i, result)
        except BaseException:  # interrupted or failed: leave no task running on the cluster
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return in_order(done, len(items))


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a ``host:port`` (or ``ray://host:port``) nobody listens on: ray.init
    itself retries such an address for minutes. ``"auto"`` and the like are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ExecutorError(
            f"cannot connect to the Ray cluster at {address!r}: nothing answers on "
            f"{host}:{port} ({exc}); start one (`ray start --head`) or leave out --address "
            "for a local Ray instance"
        ) from exc


def remote_traceback(exc: BaseException) -> str:
    """The traceback of the code that failed: the remote one a Ray task error carries
    (``RayTaskError.traceback_str``), else this exception's own."""
    text = getattr(exc, "traceback_str", None)
    if isinstance(text, str) and text.strip():
        return text
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def remote_cause(exc: BaseException) -> BaseException:
    """The exception a Ray task error wraps (``RayTaskError.cause``), else ``exc``."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def make_executor(
    name: str = "local", *, address: str | None = None, num_cpus: int | None = None
) -> Executor[Any, Any]:
    """The executor called ``name`` (one of :data:`EXECUTORS`).

    Raises ``ValueError`` for an unknown name, or ``address`` / ``num_cpus`` given to the
    local executor (they would be silently ignored).
    """
    if name == "local":
        if address is not None or num_cpus is not None:
            raise ValueError("--address and --num-cpus are for --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address, num_cpus=num_cpus)
    raise ValueError(f"unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
