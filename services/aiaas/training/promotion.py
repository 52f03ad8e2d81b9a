"""Which aliases a freshly trained version gets: the promotion policy.

A trainer registers every version it makes, but only one that scores at least as well as the
version in production should replace it without a person deciding. The rest land on
`staging`, where `aiaas models promote` can still put them live (and `rollback` undo that).

A version scored on the job's own data (a hold-out of the data the job brought, or evaluation
data the job also trained on) lands on `staging` whatever the mode: a training job is untrusted
input, and a score it could choose the test set for says nothing about what production serves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from aiaas.model_types import model_type

if TYPE_CHECKING:  # only for the annotation: the registry never needs this module
    from aiaas.registry.store import Registry

__all__ = ["PromotionPolicy", "default_policy", "PRODUCTION", "STAGING"]

PRODUCTION = "production"
"""The alias services serve by default (`AIAAS_<MODEL>_MODEL_VERSION`)."""

STAGING = "staging"
"""Where a version waits when it is not promoted automatically."""

class PromotionPolicy(BaseModel):
    """How a new version of one model type is aliased: by comparing one metric with production's.

    A pydantic model (frozen, no extra fields) so that a training job can carry one in its
    envelope and a typo in a field name is refused instead of silently ignored.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    metric: str = Field(description="Metric in `ModelVersion.metrics` to compare; higher must be better.")
    mode: Literal["auto", "always", "never"] = Field(
        "auto",
        description="`auto`: production when it scores at least production + min_delta (or there is no "
        "production yet), else staging; `always`: production; `never`: staging.",
    )
    min_delta: float = Field(
        0.0,
        description="How much better than production a version must score to replace it in `auto` mode "
        "(negative: how much worse it may be).",
    )

    def aliases_for(self, registry: Registry, model: str, metrics: dict[str, float], *,
                    scored_on_job_data: bool = False) -> tuple[str, ...]:
        """The aliases to register a version with `metrics` under: `("production",)` or `("staging",)`.

        `scored_on_job_data`: the metrics were measured on data the training job chose; such a
        version is never made `production` here (only a person can, with `aiaas models promote`).
        """
        if scored_on_job_data:
            return (STAGING,)
        if self.mode == "always":
            return (PRODUCTION,)
        if self.mode == "never":
            return (STAGING,)
        return (PRODUCTION,) if self._beats_production(registry, model, metrics) else (STAGING,)

    def _beats_production(self, registry: Registry, model: str, metrics: dict[str, float]) -> bool:
        # Checked before looking at the registry, so a trainer that forgot to report the metric
        # fails on its first run, not only once a production version exists.
        if self.metric not in metrics:
            raise ValueError(
                f"cannot apply the promotion policy: the new {model} version has no {self.metric!r} metric "
                f"(it has: {', '.join(sorted(metrics)) or 'none'})"
            )
        current = registry.aliases(model).get(PRODUCTION)
        if current is None:  # nothing is served yet: anything beats nothing
            return True
        baseline = registry.resolve(model, str(current)).metrics.get(self.metric)
        if baseline is None:  # production cannot be compared with; leave the choice to a person
            return False
        # NaN on either side compares False: an unscored version never replaces production.
        return metrics[self.metric] >= baseline + self.min_delta


def default_policy(model: str) -> PromotionPolicy:
    """The `auto` policy on the metric that `model`'s trainer records (its registration says which)."""
    return PromotionPolicy(metric=model_type(model).metric)
