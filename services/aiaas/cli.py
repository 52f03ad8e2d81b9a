"""The `aiaas` command line: submit jobs, read results, show traces, manage topics and models."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
import time
from pathlib import Path

import numpy as np

from . import tracing
from .client import AiaasClient, JobHandle
from .contracts import Result
from .errors import AiaasError
from .model_cli import MODEL_TYPES, JobSpec, model_cli
from .registry import Registry
from .settings import HomeSettings, KafkaSettings

__all__ = ["main"]

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiaas", description="AI models as async services over Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", help="publish inference jobs")
    per_model = submit.add_subparsers(dest="model", required=True, metavar="{" + ",".join(MODEL_TYPES) + "}")
    for model in MODEL_TYPES:
        model_parser = per_model.add_parser(model, help=f"jobs for the {model} service")
        model_cli(model).add_submit_arguments(model_parser)
        model_parser.add_argument("--wait", action="store_true", help="wait for every result and print a summary")
        model_parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for results (--wait)")
        model_parser.add_argument("--version", help="pin a model version or alias")
        model_parser.add_argument("--priority", type=int, default=0)
        model_parser.add_argument("--quiet", action="store_true", help="print only the summary")
        model_parser.add_argument("--rate", type=float, default=0.0,
                                  help="jobs per second, open loop (default: all at once, a burst)")

    results = sub.add_parser("results", help="print results as they arrive")
    results.add_argument("model", choices=MODEL_TYPES)
    results.add_argument("--follow", action="store_true", help="keep reading new results until Ctrl-C")
    results.add_argument("--from-beginning", action="store_true", help="start at the oldest result")

    show = sub.add_parser("trace", help="print one job's span tree from the local span store")
    show.add_argument("job_id")
    show.add_argument("--wait", type=float, default=3.0, help="seconds to wait for late spans")

    sub.add_parser("topics", help="list aiaas topics and their partitions")

    models = sub.add_parser("models", help="the model registry")
    models_sub = models.add_subparsers(dest="action", required=True)
    models_sub.add_parser("list", help="versions and aliases")
    build = models_sub.add_parser("build", help="train a model and register a new version")
    build.add_argument("model", choices=MODEL_TYPES)

    schemas = sub.add_parser("schemas", help="the generated contract documents in schemas/")
    schemas.add_argument("action", choices=("write", "check"))
    schemas.add_argument("--dir", type=Path, default=Path("schemas"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; errors are one line on stderr with what to do, exit status 2."""
    args = _parser().parse_args(argv)
    provider = tracing.setup_tracing("aiaas-cli")
    try:
        return _COMMANDS[args.command](args) or 0
    except (AiaasError, TimeoutError) as exc:
        print(f"aiaas: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        provider.shutdown()


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
                                       priority=args.priority, attributes=spec.attributes)

        handles = await asyncio.gather(*(send(i, spec) for i, spec in enumerate(specs)))
        if not args.wait:
            for handle in handles:
                print(handle.job_id)
            return 0
        outcomes = await asyncio.gather(*(_wait(h, args.timeout) for h in handles))
        finished = time.time()
    if not args.quiet:
        for handle, (result, _) in zip(handles, outcomes):
            print(_result_line(result) if result else f"{handle.job_id}  (no result)")
    print(_summary(args.model, handles, outcomes, specs, finished - started))
    return 0 if all(r is not None for r, _ in outcomes) else 1


async def _wait(handle: JobHandle, timeout: float) -> tuple[Result | None, float]:
    try:
        result = await handle.result(timeout)
    except TimeoutError:
        return None, float("nan")
    return result, handle.latency_ms


def _summary(model: str, handles, outcomes, specs: list[JobSpec], wall_s: float) -> str:
    received = [(r, ms) for r, ms in outcomes if r is not None]
    latencies = np.array([ms for _, ms in received]) if received else np.array([float("nan")])
    ok = [r for r, _ in received if r.status == "ok"]
    checker = model_cli(model)
    scored = [checker.is_correct(r, spec.expected) for (r, _), spec in zip(outcomes, specs)
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
    from .span_store import job_trace, load_spans, render_trace

    directory = HomeSettings().span_dir
    deadline = time.time() + args.wait
    while True:
        spans = job_trace(load_spans(directory), args.job_id)
        complete = any(s.name.startswith("process") and s.service == "aiaas-cli" for s in spans) or \
            any(s.kind == "CONSUMER" and s.name.endswith(".results") for s in spans)
        if complete or time.time() > deadline:
            break
        time.sleep(0.25)
    if not spans:
        raise AiaasError(
            f"no spans for job {args.job_id} in {directory}; spans are stored locally only when no "
            "OTEL_EXPORTER_OTLP_ENDPOINT is set (otherwise look in your tracing backend)"
        )
    print(render_trace(spans))
    return 0


def _cmd_topics(args: argparse.Namespace) -> int:
    from aiokafka.errors import KafkaConnectionError

    from .client import broker_unreachable
    from .topics import list_topics

    settings = KafkaSettings()
    try:
        topics = asyncio.run(list_topics(settings))
    except KafkaConnectionError as exc:
        raise broker_unreachable(settings, exc) from exc
    for name, partitions in topics.items():
        print(f"{name:40} partitions={partitions}")
    if not topics:
        print(f"no {settings.topic_prefix}.* topics yet (services create theirs at start)")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    registry = Registry(HomeSettings().registry_dir)
    if args.action == "build":
        trainer = importlib.import_module(f"aiaas.{args.model}.trainer")
        version = trainer.build(registry)
        print(f"built {version.model} v{version.version}  sha256={version.sha256[:16]}…  "
              f"metrics={version.metrics}  → {registry.root / version.model / f'v{version.version}'}")
        return 0
    for model in registry.models():
        aliases = registry.aliases(model)
        for v in registry.versions(model):
            tags = ",".join(a for a, n in sorted(aliases.items()) if n == v.version)
            metrics = " ".join(f"{k}={val:.4g}" for k, val in v.metrics.items())
            print(f"{model:10} v{v.version:<4} {tags:12} {metrics}  sha256={v.sha256[:12]}")
    if not registry.models():
        print(f"registry {registry.root} is empty: run `aiaas models build <{'|'.join(MODEL_TYPES)}>`")
    return 0


def _cmd_schemas(args: argparse.Namespace) -> int:
    from .schemas import check_schemas, write_schemas

    if args.action == "write":
        for path in write_schemas(args.dir):
            print(f"wrote {path}")
        return 0
    drift = check_schemas(args.dir)
    for path in drift:
        print(f"out of date: {path} (run `aiaas schemas write`)", file=sys.stderr)
    return 1 if drift else 0


_COMMANDS = {
    "submit": _cmd_submit,
    "results": _cmd_results,
    "trace": _cmd_trace,
    "topics": _cmd_topics,
    "models": _cmd_models,
    "schemas": _cmd_schemas,
}


if __name__ == "__main__":
    sys.exit(main())
