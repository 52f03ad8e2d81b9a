"""Errors carry flags, not strings: the class decides retry, dead letter or redelivery."""

from __future__ import annotations

from typing import Any

__all__ = [
    "AiaasError",
    "InvalidJob",
    "PayloadTooLarge",
    "UndecodableMessage",
    "UnknownModelVersion",
    "NothingToRollBack",
    "ModelFailure",
    "BrokerUnavailable",
    "TrainingFailed",
    "TooManyAttempts",
    "TimeLimitExceeded",
    "Undeliverable",
    "ServiceMisconfigured",
    "InvalidHeaders",
    "RefusedReplyTo",
    "UnparseableRecord",
    "KafkaAuthenticationFailed",
    "TopicNotCreated",
    "ArtifactCorrupted",
    "AclRefused",
    "SeenFileLocked",
    "TransactionalIdInUse",
    "TransactionFenced",
    "PublishFailed",
    "TrainingInterrupted",
]


class AiaasError(Exception):
    """Base of every aiaas error. `retriable` says whether trying the same job again may work."""

    retriable = False

    @property
    def type_name(self) -> str:
        """The name written into error results and DLQ headers."""
        return type(self).__name__


class UndecodableMessage(AiaasError):
    """The message bytes are not a msgpack job envelope within the limits."""


class PayloadTooLarge(AiaasError):
    """The message is bigger than the configured maximum."""


class InvalidJob(AiaasError):
    """The envelope decoded but breaks the contract (types, shapes, model, values)."""


class UnparseableRecord(UndecodableMessage):
    """The Kafka client itself could not parse the record (e.g. a header key that is not UTF-8): it was stepped
    over, and its dead letter carries only its coordinates."""


class InvalidHeaders(InvalidJob):
    """A Kafka header that aiaas reads is missing its value, is not text, is malformed, or there are too many."""


class RefusedReplyTo(InvalidJob):
    """The job's `reply_to` names a topic the operator does not allow results to go to, or one that does not exist."""


class UnknownModelVersion(AiaasError):
    """The job pins a model version or alias that the registry does not have."""


class NothingToRollBack(AiaasError):
    """An alias has no earlier version to go back to (never moved, or every move already undone)."""


class ModelFailure(AiaasError):
    """The model runtime raised while running a batch; the jobs may succeed on another try."""

    retriable = True


class BrokerUnavailable(AiaasError):
    """Kafka could not be reached."""

    retriable = True


class TrainingFailed(AiaasError):
    """Training ran but could not finish (the trainer raised); the job ends `failed` with a dead letter."""


class TooManyAttempts(AiaasError):
    """A training job was started `max_attempts` times without finishing (its trainer kept dying)."""


class TimeLimitExceeded(AiaasError):
    """A training job ran past the trainer's wall-time limit (`AIAAS_TRAINER_MAX_TRAIN_S`) and was stopped.

    Not retriable: the same job would run out of time again; ask for fewer epochs or less data.
    """


class Undeliverable(AiaasError):
    """The broker refused the job's outcome for good (e.g. too large): only a bare dead letter can be written."""


class ServiceMisconfigured(AiaasError):
    """The service's settings ask for what it cannot serve (e.g. a precision its backend or model version lacks)."""


class KafkaAuthenticationFailed(BrokerUnavailable):
    """Kafka answered but refused this connection's security settings (SASL credentials or mechanism,
    TLS trust or client certificate); trying again with the same settings will not help."""

    retriable = False


class TopicNotCreated(AiaasError):
    """The broker refused to create a topic aiaas needs (permissions, name, or the cluster's policy)."""


class ArtifactCorrupted(ServiceMisconfigured):
    """A registered artifact's bytes do not match the sha256 recorded when it was registered (`registry/store.py`):
    rebuild or re-register that version, or serve another."""


class AclRefused(AiaasError):
    """The broker did not create the topics or ACLs, or set the quotas (not a super user, no authorizer, timed
    out); the message says which."""


class SeenFileLocked(AiaasError):
    """Another SeenFile (in this process or another one) has the same file open: two writers would lose ids.

    Not retriable at once; close the other reader first (its lock goes away with its process).
    """


class TransactionalIdInUse(ServiceMisconfigured):
    """Another live process on this host already holds the transactional id this replica was configured with."""


class TransactionFenced(AiaasError):
    """Another producer with our transactional id took over (or the broker refused us): stop serving."""


class PublishFailed(AiaasError):
    """Some outcomes of a batch were not acknowledged; `failures` pairs each such record with its error. The batch's
    jobs run again (or, where the broker refused an outcome for good, end as a dead letter)."""

    retriable = True

    def __init__(self, failures: list[tuple[Any, BaseException]]) -> None:
        first = failures[0][1]
        super().__init__(f"{len(failures)} outcome(s) not published; first: {type(first).__name__}: {first}")
        self.failures = failures


class TrainingInterrupted(Exception):
    """The trainer is stopping: the run ended early, and the job is left to run again. Deliberately not an
    AiaasError: nothing about the job is wrong, so it gets no `failed` event and no dead letter (like
    asyncio.CancelledError, it is a signal that travels as an exception)."""

