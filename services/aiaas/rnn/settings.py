"""Settings of the rnn service (prefix `AIAAS_RNN_`)."""

from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from aiaas.settings import ModelCalls, WorkerSettings

if TYPE_CHECKING:
    from aiaas.rnn.runtime import RnnLimits

__all__ = ["RnnSettings"]


class RnnSettings(WorkerSettings):
    """Batching, limits and runtime choice for the rnn service."""

    model_config = SettingsConfigDict(env_prefix="AIAAS_RNN_", extra="ignore")

    max_batch: int = Field(
        256, ge=1, le=4096,
        description="Most jobs in one model call. A batch is cut into length groups, one session run each: a big "
        "batch fills each group with more sessions, so a run's fixed cost is shared by more of them.",
    )

    intra_op_threads: int = Field(
        1, ge=0,
        description="ONNX Runtime intra-op threads (0: one per core). One: the GRU's matrices are small, a run gains "
        "little from more, and they would take the cores the service's event loop needs.",
    )

    max_k: int = Field(100, ge=1, description="Largest `k` a job may ask for (capped at the number of items).")

    max_session_items: int = Field(
        50, ge=1, le=10_000,
        description="Most items a job's session may hold. A GRU's work grows with the session's length, step after "
        "step; the recent items say most about the next one, so a caller with a longer session sends its end.",
    )

    call_overhead_slots: int = Field(
        32, ge=0,
        description="The fixed cost of one session run in (session × position) slots: a longer session joins a "
        "length group unless that pads more slots than this, else it starts a run of its own. 0: one run per "
        "distinct length (no padding at all); a huge value: the whole batch in one run, padded to its longest.",
    )

    model_calls: ModelCalls = Field(
        "auto",
        description="Where the model's batch calls run (see WorkerSettings). `auto`: on the event loop on a CPU, where "
        "a batch's call is short and handing it to a thread and back costs more than the thread wins, as for recsys "
        "and vision; on a model thread on a GPU.",
    )

    def limits(self) -> "RnnLimits":
        """What one job may ask for and how a batch is cut into session runs, as the runtime takes them."""
        from aiaas.rnn.runtime import RnnLimits

        return RnnLimits(self.max_k, self.max_session_items, self.call_overhead_slots)
