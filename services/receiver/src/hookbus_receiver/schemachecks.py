"""Partners' JSON Schema checks in worker processes, each under a time budget: no body,
however costly to validate, holds the receiver's event loop.

A thread would not do: validators hold the GIL while they run. A worker process gets
the body's bytes and the schema, decodes and validates, and answers the violations. One
that outlives the budget is killed (the body is refused with 422) and replaced; a request
that finds every worker busy for a whole budget is asked to retry (429). Workers start
on the first schema check, so a receiver without partner schemas starts none.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from multiprocessing.connection import Connection
from typing import Any, Final

import msgspec

from .refusals import Unavailable, ValidationAborted, ValidationBusy
from .validation import InvalidConfig, SchemaCheck, Violation, compile_schema

log = logging.getLogger(__name__)

# Starting a worker (a new interpreter importing the validators) is not part of a budget.
START_TIMEOUT: Final = 60.0
_COMPILED_MAX: Final = 256
_READY: Final = "ready"


# ------------------------------------------------------------------ in the worker


def serve(conn: Connection) -> None:
    """A worker's loop: (key, schema JSON, body) in, ("ok", violations) out, until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the receiver to handle
    compiled: dict[str, SchemaCheck] = {}
    conn.send(_READY)
    while True:
        try:
            key, schema, body = conn.recv()
        except (EOFError, OSError):
            return  # the receiver closed the pipe or died: nothing left to do
        try:
            check = compiled.get(key)
            if check is None:
                if len(compiled) >= _COMPILED_MAX:
                    compiled.clear()
                check = compiled[key] = compile_schema(msgspec.json.decode(schema))
            found = check(msgspec.json.decode(body))
            answer: tuple[str, Any] = ("ok", [(v.path, v.message) for v in found])
        except InvalidConfig as exc:
            answer = ("config", str(exc))
        except Exception as exc:  # reported to the receiver, which logs it
            answer = ("error", f"{type(exc).__name__}: {str(exc)[:300]}")
        conn.send(answer)


# ------------------------------------------------------------------ in the receiver


class _NotStarted(Exception):
    pass


class _Worker:
    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=serve, args=(child,), name="hookbus-receiver-schema-check", daemon=True
        )
        self.process.start()
        child.close()
        self.ready = False

    def ask(self, message: tuple[str, bytes, bytes], budget: float) -> Any:
        """Blocking (run it in a thread): the worker's answer, or None past the budget."""
        if not self.ready:
            if not self.conn.poll(START_TIMEOUT) or self.conn.recv() != _READY:
                raise _NotStarted()
            self.ready = True
        self.conn.send(message)
        if not self.conn.poll(budget):
            return None
        return self.conn.recv()

    def reap(self) -> None:
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self.conn.close()


class SchemaChecks:
    """Opened in the app's lifespan; ``close()`` stops every worker."""

    def __init__(self, *, workers: int, budget: float) -> None:
        self.budget = budget
        # A slot per worker; None until it first runs a check (or after it was killed).
        self._idle: asyncio.Queue[_Worker | None] = asyncio.Queue()
        for _ in range(workers):
            self._idle.put_nowait(None)
        self._all: set[_Worker] = set()

    async def violations(self, key: str, schema: bytes, body: bytes) -> list[Violation]:
        """What the JSON Schema (JSON text, compiled once per ``key``) finds wrong with the
        JSON ``body``. Raises ValidationAborted past the budget (or when the worker died
        on this body), ValidationBusy when no worker came free within the budget,
        InvalidConfig for a schema that cannot be used, Unavailable when no worker runs."""
        try:
            worker = await asyncio.wait_for(self._idle.get(), self.budget)
        except TimeoutError:
            raise ValidationBusy(1.0) from None
        answer: Any = None
        try:
            if worker is None:
                worker = _Worker()
                self._all.add(worker)
            answer = await asyncio.to_thread(worker.ask, (key, schema, body), self.budget)
        except (EOFError, OSError) as exc:
            log.warning("a schema check worker stopped", extra={"error": repr(exc)})
            raise ValidationAborted("the validator stopped while checking the body") from None
        except _NotStarted:
            log.error("a schema check worker did not start")
            raise Unavailable("could not validate the body; retry") from None
        finally:
            # Past the budget, cancelled or dead: a worker whose pipe may still hold an
            # answer meant for this request serves no other.
            if answer is None and worker is not None:
                self._retire(worker)
                worker = None
            self._idle.put_nowait(worker)
        match answer:
            case None:
                raise ValidationAborted(
                    "validating the body against the partner's JSON Schema took longer"
                    f" than {self.budget:g} s"
                )
            case ("ok", found):
                return [Violation(path, message) for path, message in found]
            case ("config", message):
                raise InvalidConfig(message)
            case _:
                log.error("schema check failed", extra={"error": str(answer[1])})
                raise Unavailable("could not validate the body; retry")

    def _retire(self, worker: _Worker) -> None:
        """Kill now (a signal: nothing blocks); reap and close in a thread."""
        self._all.discard(worker)
        worker.process.kill()
        asyncio.get_running_loop().run_in_executor(None, worker.reap)

    async def close(self) -> None:
        workers, self._all = list(self._all), set()
        for worker in workers:
            worker.conn.close()  # a worker at rest exits on EOF
        for worker in workers:
            await asyncio.to_thread(worker.reap)
