"""`aiaas top`: a live view of every running service and trainer of this host, refreshed each second.

It finds them by their target files (`<AIAAS_HOME>/metrics/targets/`, as Prometheus does) or by `--url`, scrapes
their `/metrics` and `/readyz`, and shows per model type the last few seconds (`metrics/fleet.py`), drawn with rich.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from aiaas.metrics.fleet import FleetView, ServiceRow, TrainerRow, scrape
from aiaas.metrics.targets import Target, list_targets, targets_dir

__all__ = ["run_top"]


def run_top(home: Path, urls: list[str], *, interval_s: float, rounds: int | None, console: Console | None = None
            ) -> int:
    """Scrape and redraw every `interval_s` until Ctrl-C (or `rounds` redraws, then print the last one)."""
    # Printed to a pipe or file, rich would squeeze the tables into 80 columns.
    console = console or Console(width=None if Console().is_terminal else 160)
    view = FleetView()
    found = _finder(home, urls)
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="aiaas-top") as pool:
        def round_() -> Group:
            view.add(pool.map(scrape, found()))
            return _screen(view, home, urls)

        if rounds is not None:  # a fixed number of rounds, printed once: for scripts
            for i in range(rounds):
                screen = round_()
                if i < rounds - 1:
                    time.sleep(interval_s)
            console.print(screen)
            return 0
        with Live(round_(), console=console, screen=False, auto_refresh=False) as live:
            try:
                while True:
                    time.sleep(interval_s)
                    live.update(round_(), refresh=True)
            except KeyboardInterrupt:
                return 0
    return 0


def _finder(home: Path, urls: list[str]) -> Callable[[], list[Target]]:
    given = [_target_of(url, i) for i, url in enumerate(urls)]
    return (lambda: given) if given else (lambda: list_targets(home))


def _target_of(url: str, index: int) -> Target:
    """A target named on the command line: its role and model are read from its metrics (the labels say)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    probe = scrape(Target(parts.netloc, "?", "service", url, -1 - index))
    models = probe.label_values("aiaas_model_info", "model") or probe.label_values("aiaas_training_epochs_total",
                                                                                   "model")
    role = "trainer" if probe.label_values("aiaas_training_epochs_total", "model") else "service"
    return Target(parts.netloc, next(iter(models), "?"), role, url, -1 - index)


def _screen(view: FleetView, home: Path, urls: list[str]) -> Group:
    services, trainers = view.services(), view.trainers()
    where = ", ".join(urls) if urls else str(targets_dir(home))
    parts: list[Table | Text] = [Text(f"aiaas top · {time.strftime('%H:%M:%S')} · {where}", style="bold")]
    if not services and not trainers:
        parts.append(Text("no aiaas process found: start one (aiaas serve <model>), or name endpoints with --url"))
    if services:
        parts.append(_services_table(services))
    if trainers:
        parts.append(_trainers_table(trainers))
    return Group(*parts)


def _services_table(rows: list[ServiceRow]) -> Table:
    table = Table(title="services (last 10 s)", title_justify="left")
    for name in ("model", "replicas", "ready", "jobs/s", "p50 ms", "p99 ms", "errors/s", "lag", "in flight",
                 "batch", "version", "dead letters"):
        table.add_column(name, justify="left" if name in ("model", "version") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r.model, str(r.replicas), str(r.ready), f"{r.jobs_per_s:,.1f}", _ms(r.p50_s), _ms(r.p99_s),
                      f"{r.errors_per_s:,.1f}", f"{r.lag:,.0f}", f"{r.in_flight:,.0f}",
                      "-" if r.batch_size is None else f"{r.batch_size:.1f}", r.versions, f"{r.dead_letters:,.0f}")
    return table


def _trainers_table(rows: list[TrainerRow]) -> Table:
    table = Table(title="trainers", title_justify="left")
    for name in ("model", "replicas", "training", "epochs", "succeeded", "failed", "last metric"):
        table.add_column(name, justify="left" if name in ("model", "last metric") else "right", no_wrap=True)
    for r in rows:
        table.add_row(r.model, str(r.replicas), f"{r.running:.0f}", f"{r.epochs:.0f}", f"{r.succeeded:.0f}",
                      f"{r.failed:.0f}", r.metric or "-")
    return table


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f}"

