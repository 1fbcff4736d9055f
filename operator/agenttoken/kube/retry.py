"""Read-modify-write against an optimistic lock: retry the whole step when the write meets a 409.

The operator's stores (signing keys, revocation list) and `agenttoken revoke` write objects
that another writer may change in between (a second operator replica, the CLI). Each write
carries the resourceVersion it read; a 409 Conflict means "someone wrote first", and the only
correct answer is to read again, decide again and write again — like client-go's
`retry.RetryOnConflict`. The loop is tenacity's (a maintained retry library); this module only
says which error is worth a retry, how often, and what giving up looks like.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_random_exponential

from agenttoken.kube.errors import KubeError

T = TypeVar("T")

# As many attempts as client-go's DefaultRetry; a conflict needs a concurrent writer, so five in
# a row means something keeps fighting over the object and the caller should know.
ATTEMPTS = 5
# Full-jitter backoff between attempts (up to 10, 20, 40, 80 ms): two writers that conflicted
# once do not step on each other again in lockstep.
_WAIT = wait_random_exponential(multiplier=0.01, max=0.5)


class ConflictRetriesExhausted(RuntimeError):
    """Every attempt of a read-modify-write step ended in a 409 Conflict."""

    def __init__(self, what: str, attempts: int) -> None:
        super().__init__(f"{what}: gave up after {attempts} write conflicts in a row")
        self.what = what
        self.attempts = attempts


def _is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, KubeError) and exc.conflict


async def retry_on_conflict(step: Callable[[], Awaitable[T]], *, what: str, attempts: int = ATTEMPTS) -> T:
    """Run `step` (read, decide, write) until it does not end in a 409; return its result.

    Any other exception passes through at once. After `attempts` conflicts in a row, raises
    ConflictRetriesExhausted (chained to the last conflict); `what` names the object in it.
    """

    def give_up(state: RetryCallState) -> T:
        last = state.outcome.exception() if state.outcome is not None else None
        raise ConflictRetriesExhausted(what, attempts) from last

    retrying = AsyncRetrying(
        retry=retry_if_exception(_is_conflict),
        stop=stop_after_attempt(attempts),
        wait=_WAIT,
        retry_error_callback=give_up,
    )
    # cast: tenacity types the result of the wrapped call loosely.
    return cast(T, await retrying(step))
