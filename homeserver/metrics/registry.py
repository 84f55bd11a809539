"""The metric families of one homeserver, on a registry of its own.

What the hot paths update is kept to a histogram observation per request and per event
persisted, and a gauge for requests in flight. Everything else is read when a scrape comes
(``Metrics.collect``): the notifier's waiting requests and wake-up counts, the WebSocket
connections, the database pools, the shared reads' counts, and the pushers' and application
services' queues (two database reads per scrape).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Protocol

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from homeserver.core.clock import Clock
from homeserver.storage.metrics import (
    AppServiceQueue,
    FederationQueues,
    MetricsStore,
    PusherQueues,
)
from homeserver.storage.shared_reads import shared_read_stats

PREFIX = "homeserver_"
# Seconds: a request answered from memory to a long-poll's timeout.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
PERSIST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class WakeupCounts(Protocol):
    """The notifier, as the metrics see it."""

    wakeups_received: int
    listeners_woken: int

    def waiting(self) -> int: ...


class Pools(Protocol):
    def pool_use(self) -> list[tuple[str, int, int]]: ...


class Connections(Protocol):
    @property
    def connections(self) -> Collection[object]: ...


class Metrics:
    """The families; ``watch`` gives it what it reads at a scrape (built after the
    services, in the composition root)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            PREFIX + "http_request_duration_seconds",
            "Time from a request's arrival to the end of its response, by route template,"
            " method and status class",
            ("route", "method", "status"),
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        # A plain count the middleware moves (a gauge's lock costs more), read at a scrape.
        self.requests_in_flight = 0
        Gauge(
            PREFIX + "http_requests_in_flight",
            "HTTP requests being answered (long-polls included)",
            registry=self.registry,
        ).set_function(lambda: self.requests_in_flight)
        self.event_persist = Histogram(
            PREFIX + "event_persist_duration_seconds",
            "Time to persist one local event (its transaction), sends and state changes",
            buckets=PERSIST_BUCKETS,
            registry=self.registry,
        )
        # The process's own: CPU, memory, open files, garbage collections, Python version.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(collector)
        self._live: _Live | None = None

    def watch(
        self,
        notifier: WakeupCounts,
        websockets: Connections,
        pools: Pools,
        store: MetricsStore,
        clock: Clock,
    ) -> None:
        self._live = _Live(notifier, websockets, pools, store, clock)
        self.registry.register(self._live)

    async def render(self) -> bytes:
        """The text exposition of every family; reads the database for the queue depths."""
        if self._live is not None:
            await self._live.refresh()
        return generate_latest(self.registry)


class _Live(Collector):
    """The families read at a scrape from the objects that hold them."""

    def __init__(
        self,
        notifier: WakeupCounts,
        websockets: Connections,
        pools: Pools,
        store: MetricsStore,
        clock: Clock,
    ) -> None:
        self._notifier = notifier
        self._websockets = websockets
        self._pools = pools
        self._store = store
        self._clock = clock
        self._queues: list[PusherQueues] = []
        self._appservices: list[AppServiceQueue] = []
        self._federation = FederationQueues(0, 0, 0, 0, 0)

    async def refresh(self) -> None:
        self._queues = await self._store.pusher_queues()
        self._appservices = await self._store.appservice_queues()
        self._federation = await self._store.federation_queues(self._clock.now_ms())

    def describe(self) -> list[object]:
        return []  # what collect() yields depends on the state: nothing to check up front

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield GaugeMetricFamily(
            PREFIX + "sync_waiting",
            "Requests waiting for a wake-up: /sync long-polls and WebSocket syncs",
            value=self._notifier.waiting(),
        )
        yield GaugeMetricFamily(
            PREFIX + "websocket_connections",
            "Open WebSocket connections",
            value=len(self._websockets.connections),
        )
        yield CounterMetricFamily(
            PREFIX + "wakeups_received",
            "Wake-ups received from the bus (a stream moved)",
            value=self._notifier.wakeups_received,
        )
        yield CounterMetricFamily(
            PREFIX + "wakeups_delivered",
            "Waiting requests woken by a wake-up",
            value=self._notifier.listeners_woken,
        )
        in_use = GaugeMetricFamily(
            PREFIX + "db_pool_in_use", "Database connections in use, by pool", labels=("pool",)
        )
        size = GaugeMetricFamily(
            PREFIX + "db_pool_size", "Database connections of each pool", labels=("pool",)
        )
        for pool, used, total in self._pools.pool_use():
            in_use.add_metric((pool,), used)
            size.add_metric((pool,), total)
        yield in_use
        yield size
        reads = CounterMetricFamily(
            PREFIX + "shared_reads",
            "Shared reads of committed stream ranges, by cache and how each was answered:"
            " hit (kept), shared (another request's read), miss (read)",
            labels=("cache", "result"),
        )
        for name, (hits, shared, misses) in sorted(shared_read_stats().items()):
            reads.add_metric((name, "hit"), hits)
            reads.add_metric((name, "shared"), shared)
            reads.add_metric((name, "miss"), misses)
        yield reads
        families = {
            "queued": GaugeMetricFamily(
                PREFIX + "pusher_queue_depth", "Pushes queued, by pusher kind", labels=("kind",)
            ),
            "deepest": GaugeMetricFamily(
                PREFIX + "pusher_queue_max_depth",
                "The longest queue of one pusher, by pusher kind",
                labels=("kind",),
            ),
            "pushers": GaugeMetricFamily(
                PREFIX + "pushers_with_queue",
                "Pushers with pushes queued, by pusher kind",
                labels=("kind",),
            ),
            "backing_off": GaugeMetricFamily(
                PREFIX + "pushers_backing_off",
                "Pushers whose last attempts failed, by pusher kind",
                labels=("kind",),
            ),
        }
        for queue in self._queues:
            for field, family in families.items():
                family.add_metric((queue.kind,), getattr(queue, field))
        yield from families.values()
        services = {
            "pending": GaugeMetricFamily(
                PREFIX + "appservice_pending_transactions",
                "Transactions built for an application service and not yet taken by it",
                labels=("service",),
            ),
            "events_behind": GaugeMetricFamily(
                PREFIX + "appservice_events_behind",
                "Positions of the events stream not yet looked at for an application service",
                labels=("service",),
            ),
            "attempts": GaugeMetricFamily(
                PREFIX + "appservice_failed_attempts",
                "Failed attempts in a row at an application service's pending transaction",
                labels=("service",),
            ),
        }
        for service in self._appservices:
            for field, family in services.items():
                family.add_metric((service.service_id,), getattr(service, field))
        yield from services.values()
        federation = self._federation
        for name, text, value in (
            ("federation_queued_pdus", "Events queued for other servers", federation.pdus),
            ("federation_queued_edus", "EDUs queued for other servers", federation.edus),
            (
                "federation_destinations_queued",
                "Destinations with events or EDUs queued",
                federation.destinations,
            ),
            (
                "federation_queue_max_depth",
                "The longest queue (events and EDUs) of one destination",
                federation.deepest,
            ),
            (
                "federation_destinations_backing_off",
                "Destinations not to be tried again before a retry time to come",
                federation.backing_off,
            ),
        ):
            yield GaugeMetricFamily(PREFIX + name, text, value=value)
