"""The `aiaas` command line: submit jobs, read results, show traces, manage topics and models."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import numpy as np
from pydantic import ValidationError

from aiaas.cli.model_cli import JobSpec, model_cli
from aiaas.client.client import AiaasClient, JobHandle, StreamRestart
from aiaas.contract.envelopes import Result
from aiaas.contract.priority import HIGHEST, LOWEST
from aiaas.contract.topics import ModelTopics
from aiaas.errors import AiaasError
from aiaas.model_types import model_type, model_types
from aiaas.registry.store import ModelVersion, Registry
from aiaas.settings import HomeSettings, KafkaSettings, TracingSettings
from aiaas.tracing.setup import setup_tracing

if TYPE_CHECKING:
    from aiaas.contract.schemas import SchemaSources
    from aiaas.tracing.jaeger_query import JaegerQuery

__all__ = ["main", "schema_sources"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiaas", description="AI models as async services over Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)
    MODEL_TYPES = tuple(model_types())  # noqa: N806 - every registered model type (aiaas.model_types)
    kinds = "; ".join(f"{m.name}: {m.summary}" for m in model_types().values() if m.summary)

    serve = sub.add_parser("serve", help="run a model type's service until SIGTERM", description=kinds)
    serve.add_argument("model", choices=MODEL_TYPES)
    trainer = sub.add_parser("trainer", help="run a model type's trainer (training jobs) until SIGTERM",
                             description=kinds)
    trainer.add_argument("model", choices=MODEL_TYPES)

    submit = sub.add_parser("submit", help="publish inference jobs")
    per_model = submit.add_subparsers(dest="model", required=True, metavar="{" + ",".join(MODEL_TYPES) + "}")
    for model in MODEL_TYPES:
        model_parser = per_model.add_parser(model, help=f"jobs for the {model} service")
        model_cli(model).add_submit_arguments(model_parser)
        model_parser.add_argument("--wait", action="store_true", help="wait for every result and print a summary")
        model_parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for results (--wait)")
        model_parser.add_argument("--version", help="pin a model version or alias")
        model_parser.add_argument("--priority", type=_priority, default=0,
                                  help=f"{LOWEST}..{HIGHEST}; higher runs first, above 0 on the urgent lane "
                                       "(read before the infer topic)")
        model_parser.add_argument("--quiet", action="store_true", help="print only the summary")
        model_parser.add_argument("--rate", type=float, default=0.0,
                                  help="jobs per second, open loop (default: all at once, a burst)")

    train = sub.add_parser("train", help="publish a training job (a trainer runs it: aiaas trainer <model>)")
    train.add_argument("model", choices=MODEL_TYPES)
    train.add_argument("--epochs", type=int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--data", metavar="FILE", help="training data on the trainer's machine (.parquet, .npz, .jsonl)")
    train.add_argument("--data-sha256", help="refuse the file unless its sha256 is this (default: computed now)")
    train.add_argument("--base-version", help="fine-tune from this version or alias")
    train.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="settings",
                       help="a hyper-parameter of this model type's own trainer, e.g. --set lora_rank=16 "
                            "(docs/training.md lists each type's); repeat for more")
    train.add_argument("--follow", action="store_true", help="show progress until the job ends")
    train.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each event (--follow)")

    results = sub.add_parser("results", help="print results as they arrive")
    results.add_argument("model", choices=MODEL_TYPES)
    results.add_argument("--follow", action="store_true", help="keep reading new results until Ctrl-C")
    results.add_argument("--from-beginning", action="store_true", help="start at the oldest result")

    show = sub.add_parser("trace", help="print one job's span tree, or (--stats) where a model's jobs spent their "
                          "time, hop by hop; from the local span store or from Jaeger")
    show.add_argument("job_id", nargs="?")
    show.add_argument("--stats", metavar="MODEL", choices=MODEL_TYPES,
                      help="percentiles of each hop (publish, in partition, in pipeline, model call, result publish, "
                      "to reader) over the model's traced jobs, and the hop that made the slowest 1 %% slow")
    show.add_argument("--since", metavar="AGE",
                      help="with --stats: jobs the service took in the last AGE (30s, 5m, 2h, 1d; default 5m)")
    show.add_argument("--wait", type=float, default=3.0, help="seconds to wait for late spans")
    show.add_argument("--jaeger", metavar="URL", help="read the spans from Jaeger's query address "
                      "(http://127.0.0.1:16686) instead of the local store; default: AIAAS_TRACE_QUERY_URL")

    sub.add_parser("topics", help="list aiaas topics and their partitions")

    acl = sub.add_parser("acl", help="Kafka ACLs for tenants, services and trainers (docs/security.md)")
    acl.add_argument("action", choices=("print", "apply"),
                     help="print: kafka-topics.sh/kafka-acls.sh commands; apply: create the topics and ACLs now "
                     "(as a super user, with the AIAAS_KAFKA_* settings)")
    acl.add_argument("--tenants", required=True, help="comma-separated tenant names (each its SASL user name)")
    acl.add_argument("--models", default=",".join(MODEL_TYPES), help="comma-separated model types (default: all)")
    acl.add_argument("--service-user", default="aiaas-{model}", help="SASL user of each model's service")
    acl.add_argument("--trainer-user", default="aiaas-{model}-trainer",
                     help="SASL user of each model's trainer; '' for none (then only super users announce models)")
    acl.add_argument("--no-topics", action="store_true", help="ACLs only: create (or print) no topic")
    acl.add_argument("--command-config", default="admin.properties",
                     help="print: the super user's client properties file the commands pass to Kafka's tools")
    quota = acl.add_argument_group("broker quotas on each tenant (Kafka client quotas on its user; docs/security.md)")
    quota.add_argument("--producer-byte-rate", type=int, metavar="BYTES_PER_S",
                       help="how fast each tenant's producers may publish, per broker")
    quota.add_argument("--consumer-byte-rate", type=int, metavar="BYTES_PER_S",
                       help="how fast each tenant's consumers may read, per broker")
    quota.add_argument("--request-percentage", type=float, metavar="PERCENT",
                       help="the share of one broker request thread's time (I/O and network) each tenant's clients "
                       "may take")

    models = sub.add_parser("models", help="the model registry")
    models_sub = models.add_subparsers(dest="action", required=True)
    models_sub.add_parser("list", help="versions and aliases")
    build = models_sub.add_parser("build", help="train a model and register a new version")
    build.add_argument("model", choices=MODEL_TYPES)
    show_version = models_sub.add_parser("show", help="one version's metadata and the model's alias history")
    show_version.add_argument("model", choices=MODEL_TYPES)
    show_version.add_argument("ref", nargs="?", default="production", help="version (3, v3) or alias")
    show_version.add_argument("--history", type=int, default=10, help="how many recent alias moves to print")
    promote = models_sub.add_parser("promote", help="point an alias at a version; running services reload")
    promote.add_argument("model", choices=MODEL_TYPES)
    promote.add_argument("ref", help="version (3, v3) or another alias")
    promote.add_argument("--alias", default="production")
    rollback = models_sub.add_parser("rollback", help="move an alias back to where it pointed before")
    rollback.add_argument("model", choices=MODEL_TYPES)
    rollback.add_argument("--alias", default="production")

    top = sub.add_parser("top", help="a live view of the running services and trainers (Ctrl-C ends it)")
    top.add_argument("--url", action="append", default=[], metavar="URL",
                     help="an endpoint to watch (host:port), instead of the processes announced under AIAAS_HOME")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument("--rounds", type=int, help="refresh this many times, print the view once and exit")

    schemas = sub.add_parser("schemas", help="the generated documents: contracts in schemas/, the configuration "
                             "reference in docs/")
    schemas.add_argument("action", choices=("write", "check"))
    schemas.add_argument("--dir", type=Path, default=Path("schemas"), help="where the contract documents go")
    schemas.add_argument("--docs", type=Path, default=Path("docs"),
                         help="where the configuration reference goes (configuration-reference.md)")
    return parser


def _priority(text: str) -> int:
    """A job priority from the command line; argparse says what is wrong otherwise."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not LOWEST <= value <= HIGHEST:
        raise argparse.ArgumentTypeError(f"{value} is outside {LOWEST}..{HIGHEST}")
    return value


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors are one line on stderr with what to do, exit status 2."""
    args = _parser().parse_args(argv)
    if args.command in _PROCESSES:  # a long-running process with its own tracing
        return _reported(lambda: _PROCESSES[args.command](args))
    provider = setup_tracing("aiaas-cli")
    try:
        return _reported(lambda: _COMMANDS[args.command](args))
    finally:
        provider.shutdown()


def _reported(command: Callable[[], int | None]) -> int:
    """Run `command`; what a person must fix (an AiaasError, settings that do not fit) is one line, exit status 2."""
    try:
        return command() or 0
    except (AiaasError, TimeoutError) as exc:
        print(f"aiaas: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:  # settings from the environment (AIAAS_KAFKA_*, ...) that do not fit
        problems = "; ".join(".".join(map(str, e["loc"])) + (": " if e["loc"] else "")
                             + e["msg"].removeprefix("Value error, ") for e in exc.errors())
        print(f"aiaas: error: invalid {exc.title}: {problems}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _cmd_submit(args: argparse.Namespace) -> int:
    specs = model_cli(args.model).jobs_from_args(args)
    return asyncio.run(_submit(args, specs))


async def _submit(args: argparse.Namespace, specs: list[JobSpec]) -> int:
    async with AiaasClient() as client:
        started = time.time()

        async def send(index: int, spec: JobSpec) -> JobHandle:
            if args.rate > 0:  # open loop: the schedule does not wait for results
                await asyncio.sleep(max(0.0, started + index / args.rate - time.time()))
            return await client.submit(args.model, spec.inputs, task=spec.task, version=args.version,
                                       priority=args.priority, attributes=spec.attributes, messages=spec.messages,
                                       generation=spec.generation)

        if getattr(args, "stream", False):
            return await _stream(client, await send(0, specs[0]), args.timeout)

        handles = await asyncio.gather(*(send(i, spec) for i, spec in enumerate(specs)))
        if not args.wait:
            for handle in handles:
                print(handle.job_id)
            return 0
        outcomes = await asyncio.gather(*(_wait(h, args.timeout) for h in handles))
        finished = time.time()
    if not args.quiet:
        for handle, (result, _) in zip(handles, outcomes, strict=True):
            print(_result_line(result) if result else f"{handle.job_id}  (no result)")
    print(_summary(args.model, handles, outcomes, specs, finished - started))
    save = getattr(model_cli(args.model), "save_results", None)
    if save is not None:  # a model type that writes its results out (the vae's PNG grid)
        save(args, [result for result, _ in outcomes if result is not None])
    return 0 if all(r is not None for r, _ in outcomes) else 1


async def _stream(client: AiaasClient, handle: JobHandle, timeout: float) -> int:
    """Print a job's answer as it is generated, then its result line; Ctrl-C cancels the job."""
    try:
        async for piece in handle.stream(timeout):
            if isinstance(piece, Result):
                print(f"\n{_result_line(piece)}", flush=True)
                return 0 if piece.status == "ok" else 1
            if isinstance(piece, StreamRestart):
                print("\n[the job runs again from its start]", flush=True)
                continue
            print(piece, end="", flush=True)
    except asyncio.CancelledError:  # Ctrl-C
        await client.cancel(handle.job)
        print(f"\n[cancelled {handle.job_id}]", flush=True)
        return 130
    return 1


async def _wait(handle: JobHandle, timeout: float) -> tuple[Result | None, float]:
    try:
        result = await handle.result(timeout)
    except TimeoutError:
        return None, float("nan")
    latency_ms = handle.latency_ms
    assert latency_ms is not None  # `result()` returned: the result is in
    return result, latency_ms


def _summary(model: str, handles, outcomes, specs: list[JobSpec], wall_s: float) -> str:
    received = [(r, ms) for r, ms in outcomes if r is not None]
    latencies = np.array([ms for _, ms in received]) if received else np.array([float("nan")])
    ok = [r for r, _ in received if r.status == "ok"]
    checker = model_cli(model)
    scored = [checker.is_correct(r, spec.expected) for (r, _), spec in zip(outcomes, specs, strict=True)
              if r is not None and r.status == "ok" and spec.expected is not None]
    accuracy = f"{np.mean(scored) * 100:.1f}% of {len(scored)}" if scored else "n/a (no expected answers)"
    batches = [r.timings.batch_size for r in ok]
    return "\n".join([
        "summary",
        f"  jobs sent          {len(handles)}",
        f"  results received   {len(received)}  (ok {len(ok)}, error {sum(r.status == 'error' for r, _ in received)},"
        f" expired {sum(r.status == 'expired' for r, _ in received)})",
        f"  accuracy           {accuracy}",
        f"  latency p50 / p99  {np.percentile(latencies, 50):.1f} ms / {np.percentile(latencies, 99):.1f} ms",
        f"  throughput         {len(received) / wall_s:.0f} jobs/s ({wall_s:.2f} s wall)",
        f"  mean batch size    {np.mean(batches) if batches else 0:.1f}",
        f"  model versions     {', '.join(sorted({str(r.model_version) for r in ok})) or '-'}",
        f"  example job id     {handles[0].job_id}",
    ])


def _result_line(result: Result) -> str:
    if result.status != "ok":
        detail = f"{result.error.type}: {result.error.message}" if result.error else ""
        return f"{result.job_id}  {result.status}  {detail}"
    return (f"{result.job_id}  ok  {model_cli(result.model).describe(result)}  v{result.model_version}  "
            f"queue={result.timings.queue_wait_ms:.1f}ms infer={result.timings.inference_ms:.1f}ms "
            f"batch={result.timings.batch_size}")


def _cmd_results(args: argparse.Namespace) -> int:
    async def run() -> None:
        async with AiaasClient() as client:
            idle = None if args.follow else 2.0
            async for result in client.results(args.model, from_beginning=args.from_beginning, idle_timeout=idle):
                print(_result_line(result), flush=True)

    asyncio.run(run())
    return 0


def _cmd_trace(args: argparse.Namespace) -> int:
    from aiaas.tracing.jaeger_query import JaegerQuery
    from aiaas.tracing.span_store import job_trace, load_spans, render_trace

    tracing = TracingSettings()
    jaeger_url = args.jaeger or tracing.query_url
    jaeger = JaegerQuery(jaeger_url) if jaeger_url else None
    directory = HomeSettings().span_dir
    if args.stats and args.job_id:
        raise AiaasError("give a job id (one job's tree) or --stats MODEL (a model's hops), not both")
    if args.stats:
        return _trace_stats(args.stats, _seconds(args.since or "5m"), jaeger, directory)
    if not args.job_id:
        raise AiaasError("give a job id (`aiaas trace <job id>`) or a model (`aiaas trace --stats vision`)")
    if args.since:
        raise AiaasError("--since goes with --stats MODEL (one job's trace is found by its id, whenever it ran)")
    deadline = time.time() + args.wait
    previous = -1
    while True:
        spans = jaeger.job_spans(args.job_id) if jaeger else job_trace(load_spans(directory), args.job_id)
        complete = any(s.name.startswith("process") and s.service == "aiaas-cli" for s in spans) or \
            any(s.kind == "CONSUMER" and s.name.endswith(".results") for s in spans)
        # Processes export spans every 0.5 s: once the receipt is in, wait until no more arrive.
        if (complete and len(spans) == previous) or time.time() > deadline:
            break
        previous = len(spans)
        time.sleep(0.6)
    if not spans and jaeger_url:
        raise AiaasError(f"no spans of job {args.job_id} in Jaeger at {jaeger_url} (it keeps the last day's); "
                         "did the services and the CLI export there (OTEL_EXPORTER_OTLP_ENDPOINT)?")
    if not spans:
        hint = ("spans go to OTLP, not to the local store, when OTEL_EXPORTER_OTLP_ENDPOINT is set: read them "
                "from Jaeger with --jaeger URL or AIAAS_TRACE_QUERY_URL" if tracing.use_otlp else
                "spans are stored there when no OTEL_EXPORTER_OTLP_ENDPOINT is set; if the services export to "
                "Jaeger, read them there with --jaeger URL or AIAAS_TRACE_QUERY_URL")
        raise AiaasError(f"no spans for job {args.job_id} in {directory}; {hint}")
    print(render_trace(spans))
    return 0


def _trace_stats(model: str, since_s: float, jaeger: JaegerQuery | None, directory: Path) -> int:
    from aiaas.tracing.hops import job_times, render_stats
    from aiaas.tracing.span_store import load_spans

    spans = jaeger.model_spans(model, since_s) if jaeger else load_spans(directory)
    times = job_times(spans, model, since_ns=time.time_ns() - int(since_s * 1e9))
    if not times:
        where = f"Jaeger at {jaeger.url}" if jaeger else str(directory)
        raise AiaasError(f"no traced {model} jobs of the last {since_s:g} s in {where}; publish some, or look further "
                         "back (--since 1h)")
    print(render_stats(times, model))
    return 0


def _seconds(age: str) -> float:
    """`30s`, `5m`, `2h`, `1d` (or plain seconds) in seconds; AiaasError saying what is valid otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (age[:-1], age[-1]) if age and age[-1] in units else (age, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        seconds = -1.0
    if not (seconds > 0 and math.isfinite(seconds)):
        raise AiaasError(f"--since {age!r}: give an age such as 30s, 5m, 2h or 1d")
    return seconds


def _cmd_topics(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaConnectionError

    from aiaas.kafka.admin import list_topics
    from aiaas.kafka.diagnostics import explain_connection_failure

    settings = KafkaSettings()
    try:
        topics = asyncio.run(list_topics(settings))
    except KafkaConnectionError as exc:
        raise asyncio.run(explain_connection_failure(settings, exc)) from exc
    for name, partitions in topics.items():
        print(f"{name:40} partitions={partitions}")
    if not topics:
        print(f"no {settings.topic_prefix}.* topics yet (services create theirs at start)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    registry = Registry(HomeSettings().registry_dir)
    return _MODEL_ACTIONS[args.action](registry, args)


def _models_list(registry: Registry, args: argparse.Namespace) -> int:
    for model in registry.models():
        aliases = registry.aliases(model)
        for v in registry.versions(model):
            tags = ",".join(a for a, n in sorted(aliases.items()) if n == v.version)
            metrics = " ".join(f"{k}={val:.4g}" for k, val in v.metrics.items())
            print(f"{model:10} v{v.version:<4} {tags:12} {metrics}  sha256={v.sha256[:12]}")
    if not registry.models():
        print(f"registry {registry.root} is empty: run `aiaas models build <{'|'.join(model_types())}>`")
    return 0


def _models_build(registry: Registry, args: argparse.Namespace) -> int:
    version = model_type(args.model).build(registry)
    print(f"built {version.model} v{version.version}  sha256={version.sha256[:16]}…  "
          f"metrics={version.metrics}  → {registry.root / version.model / f'v{version.version}'}")
    _announce(registry, version, "registered")
    return 0


def _models_show(registry: Registry, args: argparse.Namespace) -> int:
    version = registry.resolve(args.model, args.ref)
    tags = [a for a, n in sorted(registry.aliases(args.model).items()) if n == version.version]
    rows = [
        ("aliases", ", ".join(tags) or "-"),
        ("artifact", f"{version.artifact}  sha256={version.sha256}"),
        *[("file", f"{name}  sha256={digest}") for name, digest in version.files.items()],
        ("metrics", " ".join(f"{k}={val:.4g}" for k, val in version.metrics.items()) or "-"),
        ("params", json.dumps(version.params, sort_keys=True, default=str)),
        ("data_hash", version.data_hash or "-"),
        ("parent", _ref(version.parent) if version.parent else "-"),
        ("job_id", version.job_id or "-"),
        ("created_at", _when(version.created_at)),
    ]
    print(f"{version.model} v{version.version}")
    for name, value in rows:
        print(f"  {name:11} {value}")
    print(_history_block(registry, args.model, args.history))
    return 0


def _history_block(registry: Registry, model: str, limit: int) -> str:
    moves = registry.alias_history(model)[-limit:] if limit > 0 else []
    if not moves:
        return "alias history: none recorded"
    lines = [f"alias history (latest {len(moves)}, oldest first)"]
    lines += [f"  {_when(m.at)}  {m.alias:11} {_ref(m.previous)} → v{m.version}  {m.reason}" for m in moves]
    return "\n".join(lines)


def _models_promote(registry: Registry, args: argparse.Namespace) -> int:
    before = registry.aliases(args.model).get(args.alias)
    version = registry.promote(args.model, args.ref, alias=args.alias)
    if before == version.version:
        print(f"{args.model} {args.alias}: already v{version.version}, nothing moved")
        return 0
    print(f"{args.model} {args.alias}: {_ref(before)} → v{version.version}")
    _announce(registry, version, "promoted")
    return 0


def _models_rollback(registry: Registry, args: argparse.Namespace) -> int:
    before = registry.aliases(args.model).get(args.alias)
    version = registry.rollback(args.model, alias=args.alias)
    print(f"{args.model} {args.alias}: {_ref(before)} → v{version.version} (rolled back)")
    _announce(registry, version, "rolled_back")
    return 0


def _announce(registry: Registry, version: ModelVersion,
              action: Literal["registered", "promoted", "rolled_back"]) -> None:
    """Tell running services about a registry change; without a broker, warn and carry on."""
    from aiokafka.errors import KafkaError

    from aiaas.registry.announce import ModelEvent, announce

    settings = KafkaSettings()
    event = ModelEvent(model=version.model, action=action, version=version.version,
                       aliases=registry.aliases(version.model),
                       job_id=version.job_id if action == "registered" else None)
    try:
        asyncio.run(announce(settings, event))
    except (KafkaError, OSError, TimeoutError) as exc:
        # The registry change already stands (services read the registry when they start), so
        # an unreachable broker is a warning, not a failure that would invite a second promote.
        print(f"aiaas: warning: the registry changed, but running {version.model} services were not told "
              f"(cannot reach Kafka at {settings.bootstrap_servers}: {type(exc).__name__}); "
              "they will pick it up when restarted", file=sys.stderr)


def _ref(version: int | None) -> str:
    return f"v{version}" if version is not None else "(none)"


def _when(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s).astimezone().isoformat(timespec="seconds")


_MODEL_ACTIONS = {
    "list": _models_list,
    "build": _models_build,
    "show": _models_show,
    "promote": _models_promote,
    "rollback": _models_rollback,
}


def schema_sources() -> SchemaSources:
    """What the generated documents describe that lives above `aiaas.contract` (its module docstring says why)."""
    from aiaas.contract.dead_letters import Origin
    from aiaas.contract.schemas import SchemaSources
    from aiaas.registry.announce import ModelEvent
    from aiaas.serving.retries import ATTEMPT, NOT_BEFORE, RetryPolicy
    from aiaas.training.settings import TrainerSettings

    written = RetryPolicy().retry_headers(Origin("topic", 0, 0), AiaasError("error"), 1, now=0.0)
    return SchemaSources(retry_headers=tuple(name for name, _ in written), attempt_header=ATTEMPT,
                         not_before_header=NOT_BEFORE, model_event=ModelEvent, trainer_settings=TrainerSettings)


def _cmd_schemas(args: argparse.Namespace) -> int:
    from aiaas.contract.schemas import check_schemas, write_schemas

    if args.action == "write":
        for path in write_schemas(args.dir, args.docs, schema_sources()):
            print(f"wrote {path}")
        return 0
    drift = check_schemas(args.dir, args.docs, schema_sources())
    for path in drift:
        print(f"out of date: {path} (run `aiaas schemas write`)", file=sys.stderr)
    return 1 if drift else 0


def _refuse_untrainable(model: str) -> None:
    if model_type(model).trainer_class is None:
        raise AiaasError(f"model type {model} takes no training jobs yet: build its version with "
                         f"`aiaas models build {model}`")


def _hyper_parameter(setting: str) -> tuple[str, int | float | str]:
    """`--set NAME=VALUE`: the value as a number where it reads as one."""
    name, equals, value = setting.partition("=")
    if not equals or not name.strip():
        raise AiaasError(f"--set {setting!r}: write NAME=VALUE, e.g. --set lora_rank=16")
    for kind in (int, float):
        try:
            return name.strip(), kind(value)
        except ValueError:
            continue
    return name.strip(), value


def _cmd_train(args: argparse.Namespace) -> int:
    _refuse_untrainable(args.model)
    inputs: dict = {k: v for k in ("epochs", "learning_rate", "batch_size", "seed", "base_version")
                    if (v := getattr(args, k)) is not None}
    inputs |= dict(_hyper_parameter(setting) for setting in args.settings)
    if args.data:
        path = Path(args.data).resolve()
        if not path.is_file():
            raise AiaasError(f"--data {args.data}: no such file (the trainer reads it from the same path)")
        inputs |= {"data_uri": path.as_uri(),
                   "data_sha256": args.data_sha256 or hashlib.sha256(path.read_bytes()).hexdigest()}
    return asyncio.run(_train(args, inputs))


async def _train(args: argparse.Namespace, inputs: dict) -> int:
    async with AiaasClient() as client:
        handle = await client.train(args.model, inputs)
        topics = ModelTopics.of(args.model, client.kafka.topic_prefix)
        tenant = client.kafka.tenant
        print(f"training job {handle.job_id} published to {topics.tenant_train(tenant) if tenant else topics.train}")
        if not args.follow:
            return 0
        async for event in handle.events(timeout=args.timeout):
            print(_training_line(event), flush=True)
        final = await handle.result(timeout=None)
    return 0 if final.status == "succeeded" else 1


def _training_line(event: Result) -> str:
    """One line per event: a progress bar while running, the new version at the end."""
    if event.status == "accepted":
        return f"accepted (attempt {event.outputs.get('attempt', 1)})"
    if event.status == "running" and event.progress is not None:
        p = event.progress
        bar = "#" * round(20 * p.epoch / p.epochs)
        metric = f" {p.metric_name} {p.metric:.4f}" if p.metric is not None else ""
        loss = f" loss {p.loss:.4f}" if p.loss is not None else ""
        if p.loss_terms:
            loss += " (" + ", ".join(f"{name} {value:.4g}" for name, value in p.loss_terms.items()) + ")"
        return f"epoch {p.epoch:>3}/{p.epochs} [{bar:<20}]{loss}{metric} eta {p.eta_s or 0:.0f}s"
    if event.status == "succeeded":
        metrics = " ".join(f"{k.removeprefix('metric.')}={v:.4g}" for k, v in event.outputs.items()
                           if k.startswith("metric."))
        aliases = ",".join(cast("list[str]", event.outputs.get("aliases", []))) or "no alias"
        return f"succeeded: {event.model} v{event.outputs.get('version')} ({aliases})  {metrics}"
    detail = f"{event.error.type}: {event.error.message}" if event.error else ""
    return f"{event.status}: {detail}"


def _cmd_acl(args: argparse.Namespace) -> int:
    from aiaas.kafka.acl import AclPlan, apply_acls, kafka_acls_commands
    from aiaas.kafka.quotas import TenantQuota, kafka_configs_commands, set_quotas

    settings = KafkaSettings()
    try:
        plan = AclPlan(settings.topic_prefix, _csv(args.models), _csv(args.tenants), args.service_user,
                       args.trainer_user or None)
        quota = TenantQuota(args.producer_byte_rate, args.consumer_byte_rate, args.request_percentage)
    except ValueError as exc:
        raise AiaasError(str(exc)) from exc
    tenants = list(plan.tenants)
    if args.action == "print":
        print("\n".join(kafka_acls_commands(plan, settings, args.command_config, topics=not args.no_topics)))
        if quota:
            print("\n".join(kafka_configs_commands(settings, "user", tenants, quota, args.command_config)))
        return 0
    created = asyncio.run(apply_acls(plan, settings, topics=not args.no_topics))
    print(f"topics created: {', '.join(created) or 'none (all there)'}")
    print(f"{len(plan.rules())} ACLs in place for tenants {', '.join(plan.tenants)} and users "
          f"{', '.join(plan.internal_users())} (prefix {plan.prefix})")
    if quota:
        asyncio.run(set_quotas(settings, "user", tenants, quota.values()))
        print(f"quota on each tenant: {quota.config_string()}")
    return 0


def _csv(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


_COMMANDS = {
    "train": _cmd_train,
    "submit": _cmd_submit,
    "results": _cmd_results,
    "trace": _cmd_trace,
    "topics": _cmd_topics,
    "models": _cmd_models,
    "schemas": _cmd_schemas,
    "acl": _cmd_acl,
}


def _cmd_top(args: argparse.Namespace) -> int:
    from aiaas.cli.top import run_top

    if args.interval <= 0 or (args.rounds is not None and args.rounds < 1):
        raise AiaasError("--interval must be above 0 and --rounds at least 1")
    return run_top(HomeSettings().home, args.url, interval_s=args.interval, rounds=args.rounds)


def _cmd_serve(args: argparse.Namespace) -> int:
    model_type(args.model).serve()
    return 0


def _cmd_trainer(args: argparse.Namespace) -> int:
    _refuse_untrainable(args.model)
    from aiaas.training.__main__ import run_model_trainer  # PyTorch loads with the trainer, not with the CLI

    run_model_trainer(args.model)
    return 0


_PROCESSES = {"serve": _cmd_serve, "trainer": _cmd_trainer, "top": _cmd_top}


if __name__ == "__main__":
    sys.exit(main())
