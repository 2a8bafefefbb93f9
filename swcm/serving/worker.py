"""The decoding worker: one thread owns the models and decodes every request, in batches.

Requests come from the event loop (`submit`, which never blocks) as jobs: texts for one model,
one target language and one set of decoding options. The worker takes the oldest job's
(model, target, options), waits up to `max_wait` seconds for more texts of that kind when it
has fewer than `batch_size`, and decodes the texts of every such job together, up to
`batch_size` at a time — so 32 clients asking for one sentence each cost one batch, not 32
decodings. A job whose texts are all decoded resolves its future; a cancelled job (its client
went away) loses its undecoded texts. The queue holds at most `max_queued` texts: past that,
`submit` raises `QueueFull` (HTTP 429).
"""

from __future__ import annotations

import collections
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from .models import ServedModel


class QueueFull(Exception):
    """The worker's queue has no room for a job's texts."""


class WorkerStopped(Exception):
    """The worker stopped (the server is shutting down) before the job was decoded."""


@dataclass(eq=False)
class Job:
    """Texts to decode with one model, into one language, with one set of options.

    key: (model name, target, source, options) — jobs with equal keys are batched together;
    results: one list of outputs (best first) per text, filled as batches finish; future:
    resolves to `results` once every text is decoded.
    """

    model: ServedModel
    texts: list[str]
    target: str
    source: str | None = None
    options: tuple = ()
    results: list = field(default_factory=list)
    future: Future = field(default_factory=Future)
    next_text: int = 0  # texts before this one are taken by a batch
    done_texts: int = 0

    def __post_init__(self):
        self.results = [None] * len(self.texts)

    @property
    def key(self) -> tuple:
        source = self.source if self.model.languages.family != "swcm" else None  # SWCM reads any language
        return (self.model.name, self.target, source, self.options)


class DecodingWorker:
    """One thread that decodes every job, batching jobs of the same kind (module docstring).

    batch_size: texts per `generate` call at most; max_wait: seconds to wait for a batch to
    fill once it holds fewer than `batch_size` texts; max_queued: texts waiting at most.
    """

    def __init__(self, batch_size: int = 32, max_wait: float = 0.005, max_queued: int = 1024):
        if batch_size < 1 or max_queued < 1 or max_wait < 0:
            raise ValueError("batch_size and max_queued must be at least 1, max_wait not negative")
        self.batch_size, self.max_wait, self.max_queued = batch_size, max_wait, max_queued
        self._jobs: collections.deque[Job] = collections.deque()
        self._queued_texts = 0
        self._lock = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="swcm-decoding-worker", daemon=True)
        self.stats = {"texts": 0, "batches": 0, "jobs": 0, "cancelled": 0, "refused": 0, "decoding": 0}
        self.error: BaseException | None = None

    # --- the event loop's side --------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stopping

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    def submit(self, job: Job) -> Future:
        """Queue `job`; returns its future (resolving to its results). QueueFull when the queue
        cannot take its texts; WorkerStopped when the worker is stopping. Never blocks for long:
        the lock is held by the worker only between batches. Jobs submitted before `start` wait
        for it."""
        with self._lock:
            if self._stopping:
                raise WorkerStopped("the server is shutting down")
            if self._queued_texts + len(job.texts) > self.max_queued:
                self.stats["refused"] += 1
                raise QueueFull(f"the decoding queue is full ({self._queued_texts} texts waiting, "
                                f"at most {self.max_queued}); try again shortly")
            self._jobs.append(job)
            self._queued_texts += len(job.texts)
            self.stats["jobs"] += 1
            self._lock.notify()
        return job.future

    def cancel(self, job: Job) -> None:
        """Drop `job`'s undecoded texts (its client went away); a batch already decoding finishes."""
        with self._lock:
            if job.future.cancel() or job.future.cancelled():
                self.stats["cancelled"] += 1
            self._drop_cancelled()

    def stop(self, finish: bool = True) -> None:
        """Stop the worker: with `finish`, after decoding every queued job; else after the batch in
        hand, the queued jobs failing with WorkerStopped. Waits for the thread."""
        with self._lock:
            self._stopping = True
            if not finish:
                for job in self._jobs:
                    if job.future.set_running_or_notify_cancel():
                        job.future.set_exception(WorkerStopped("the server shut down before decoding this request"))
                self._jobs.clear()
                self._queued_texts = 0
            self._lock.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    # --- the worker's side --------------------------------------------------------------------

    def _drop_cancelled(self) -> None:
        """Remove cancelled jobs from the queue (with the lock held)."""
        kept = collections.deque()
        for job in self._jobs:
            if job.future.cancelled():
                self._queued_texts -= len(job.texts) - job.next_text
            else:
                kept.append(job)
        self._jobs = kept

    def _take_batch(self) -> list[tuple[Job, int]] | None:
        """(job, text index) pairs of the oldest job's kind, up to `batch_size`, waiting up to
        `max_wait` for the batch to fill; None when stopping with nothing left."""
        with self._lock:
            while True:
                self._drop_cancelled()
                if self._jobs:
                    break
                if self._stopping:
                    return None
                self._lock.wait()
            key = self._jobs[0].key
            deadline = time.monotonic() + self.max_wait
            while not self._stopping:
                waiting = sum(len(j.texts) - j.next_text for j in self._jobs if j.key == key)
                remaining = deadline - time.monotonic()
                if waiting >= self.batch_size or remaining <= 0:
                    break
                self._lock.wait(remaining)
                self._drop_cancelled()
                if not any(j.key == key for j in self._jobs):
                    return []
            batch: list[tuple[Job, int]] = []
            for job in list(self._jobs):
                if job.key != key:
                    continue
                while job.next_text < len(job.texts) and len(batch) < self.batch_size:
                    batch.append((job, job.next_text))
                    job.next_text += 1
                if job.next_text == len(job.texts):
                    self._jobs.remove(job)
                if len(batch) == self.batch_size:
                    break
            self._queued_texts -= len(batch)
            return batch

    def _run(self) -> None:
        from ..generation import generate_sequences

        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if not batch:
                continue
            job = batch[0][0]
            model = job.model
            options = dict(job.options)
            self.stats["decoding"] = len(batch)
            try:
                outputs = generate_sequences(
                    model.model, model.tokenizer, [j.texts[i] for j, i in batch], job.target,
                    source_langs=job.source, languages=model.languages, batch_size=len(batch), progress=False,
                    **{**model.decoding, **options},
                )
            except Exception as error:  # a decoding failure fails the requests of this batch, not the server
                for j, _ in batch:
                    if not j.future.done() and j.future.set_running_or_notify_cancel():
                        j.future.set_exception(error)
                continue
            finally:
                self.stats["decoding"] = 0
            self.stats["batches"] += 1
            self.stats["texts"] += len(batch)
            for (j, i), texts in zip(batch, outputs):
                if j.future.cancelled() or j.future.done():
                    continue
                j.results[i] = texts
                j.done_texts += 1
                if j.done_texts == len(j.texts) and j.future.set_running_or_notify_cancel():
                    j.future.set_result(j.results)
