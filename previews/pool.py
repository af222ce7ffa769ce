"""The work-pool adapter: a pool's concurrency limit, made a hard cap, through the Prefect API (sync client).

Prefect applies a work pool's ``concurrency_limit`` when a worker polls for runs, not atomically: two workers
polling together can both take the last slot (seen here: 5 runs Running with a limit of 4 and 2 workers). A
deployment's concurrency limit is different: the server takes a slot in the database on the way to Pending,
atomically, and a run that finds none waits in Scheduled (``AwaitingConcurrencySlot``) and is offered again.
Several deployments can point at one global concurrency limit, so the pool's deployments that have no limit
of their own share ``<pool>-pool``: with it, the pool limit holds whatever the number of workers.
Deployments with their own limit (``preview-cleanup`` and ``preview-reconcile``: one at a time) keep it.
``prefect deploy`` deletes a redeployed deployment's limit, here the shared one (the whole pool loses its
cap), so the cap is set again after every deploy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
    WorkPoolUpdate,
)
from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectNotFound

from previews.errors import ValidationError
from previews.prefect_errors import PrefectAdapter, translated


def cap_name(pool: str) -> str:
    """The global concurrency limit shared by ``pool``'s deployments."""
    return f"{pool}-pool"


@dataclass(frozen=True, slots=True)
class PoolCap:
    """What :meth:`PoolLimits.cap` set: the pool's limit, the shared limit, and who shares or keeps what."""

    pool: str
    limit: int
    concurrency_limit: str
    capped: tuple[str, ...]
    own_limit: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "limit": self.limit,
            "concurrency_limit": self.concurrency_limit,
            "capped_deployments": list(self.capped),
            "deployments_with_their_own_limit": list(self.own_limit),
        }


class PoolLimits(PrefectAdapter):
    """Set a work pool's concurrency limit and the hard cap of the same size."""

    def cap(self, pool: str, limit: int) -> PoolCap:
        """Give ``pool`` a concurrency limit of ``limit`` and make it hard (the module's docstring)."""
        if limit < 1:
            raise ValidationError("limit", f"{limit} is not a positive number of runs")
        with translated(f"work pool {pool!r}"):
            try:
                self._client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=limit))
            except ObjectNotFound:
                raise ValidationError(
                    "--pool",
                    f"work pool {pool!r} does not exist on this Prefect server "
                    f"(create it: prefect work-pool create {pool} --type docker)",
                ) from None
        limit_id = self._shared_limit(cap_name(pool), limit)
        capped, own = [], []
        for deployment in self._deployments(pool):
            name = deployment.name
            mine = deployment.global_concurrency_limit
            if mine is not None and mine.id != limit_id:
                own.append(name)
                continue
            with translated(f"deployment {name!r}"):
                self._client.request(
                    "PATCH",
                    "/deployments/{id}",
                    path_params={"id": deployment.id},
                    json={"global_concurrency_limit_id": str(limit_id)},
                ).raise_for_status()
            capped.append(name)
        return PoolCap(pool, limit, cap_name(pool), tuple(sorted(capped)), tuple(sorted(own)))

    def _shared_limit(self, name: str, limit: int) -> UUID:
        with translated(f"global concurrency limit {name!r}"):
            try:
                found = self._client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                return self._client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=limit, active=True)
                )
            self._client.update_global_concurrency_limit(
                name, GlobalConcurrencyLimitUpdate(limit=limit, active=True)
            )
            return found.id

    def _deployments(self, pool: str) -> list[DeploymentResponse]:
        with translated(f"deployments of work pool {pool!r}"):
            return self._client.read_deployments(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])), limit=200
            )
