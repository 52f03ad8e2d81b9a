"""The benchmark report's ratios: per round of bursts, then the median (bench/report.py)."""

import math

from bench.load import Burst, JobTimeline, OpenLoop, Saturation, over_rounds
from bench.report import (
    MachineInfo,
    ModelResult,
    ceiling_ratios,
    markdown,
    round_ratios,
    vector_extensions,
)


def saturation(*rates: float) -> Saturation:
    return Saturation([Burst(jobs=int(rate), seconds=1.0, publish_seconds=0.5, mean_batch=8.0) for rate in rates])


def test_each_round_is_divided_by_its_own_round_not_by_the_median():
    # The machine ran at half speed in round 2: both consumers slowed down together.
    service, transport = saturation(900, 450, 880), saturation(1000, 500, 1000)
    assert round_ratios(service, transport) == [0.9, 0.9, 0.88]
    assert service.jobs_per_s / transport.jobs_per_s == 0.88  # the ratio of the medians mixes minutes


def test_the_smallest_denominator_of_each_round_counts_and_a_fixed_figure_counts_in_every_round():
    service = saturation(800, 800)
    assert round_ratios(service, saturation(1000, 2000), saturation(2000, 1000)) == [0.8, 0.8]
    assert round_ratios(service, 1000.0, saturation(4000, 500)) == [0.8, 1.6]


def test_no_ratio_without_the_same_rounds_on_both_sides():
    assert round_ratios(saturation(800, 800), saturation(1000)) == []
    assert round_ratios(saturation(800, 800), 1000.0, saturation(1000)) == []  # not a ratio to the float alone
    assert round_ratios(None, saturation(1000)) == []
    assert round_ratios(saturation(800), None, math.nan, Saturation()) == []


def test_a_round_with_nothing_to_divide_by_keeps_its_place():
    ratios = round_ratios(saturation(800, 800, 900), saturation(1000, 0.0, 1000))
    assert ratios[0] == 0.8 and math.isnan(ratios[1]) and ratios[2] == 0.9


def test_the_table_gives_the_median_of_the_rounds_and_the_details_every_round():
    result = ModelResult("recsys", max_batch=64, runtime_in_rounds=saturation(9000, 9000, 9000),
                         transport=saturation(1000, 500, 1000), naive=saturation(100, 50, 100),
                         service=saturation(900, 400, 700), service_untraced=saturation(1000, 400, 1000))
    assert ceiling_ratios(result) == [0.9, 0.8, 0.7]
    info = MachineInfo("cpu", 2, "3.11", {}, "host", (0.0, 0.0, 0.0))
    text = markdown([result], info, command="x", total_s=1, quick=False, transport_mode="subprocess", load="raw",
                    notes=[], burst_s=2, repeats=3, open_loop_s=5)
    row = next(line for line in text.splitlines() if line.startswith("| recsys |"))
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[6:8] == ["0.80", "8.00"]  # service / min(runtime, transport); service / naive
    assert "| service / min(runtime, transport) | 0.90 | 0.80 | 0.70 | 0.80 | 0.70–0.90 |" in text
    assert "| tracing on/off | 0.90 | 1.00 | 0.70 | 0.90 | 0.70–1.00 |" in text


def test_the_compute_table_gives_the_most_service_over_naive_can_be():
    from bench.ceilings import CeilingPoint, RuntimeCeiling
    from bench.compute import ComputeShare, MatmulRate

    # products 50 % of the kernel time; the runtime at 60 % of the matmul rate: 1 / (0.5 + 0.6) = 0.91x, so the
    # products already beat the measured rate: no headroom (1.00), and the most is what the runtime already does
    compute = ComputeShare("text", 32, 400e6, runtime_gflops=[120.0], matmul=[MatmulRate(200.0, "numpy, square")],
                           product_share=0.5)
    ceiling = RuntimeCeiling("text", "onnx", [CeilingPoint(32, 100.0, 3)], compute=compute)
    result = ModelResult("text", max_batch=32, runtime=[ceiling], naive=saturation(100, 100, 120),
                         runtime_in_rounds=saturation(250, 300, 300))
    info = MachineInfo("cpu", 2, "3.11", {}, "host", (0.0, 0.0, 0.0))
    text = markdown([result], info, command="x", total_s=1, quick=False, transport_mode="subprocess", load="raw",
                    notes=[], burst_s=2, repeats=3, open_loop_s=5)
    assert "| text | 32 | 400.000 | 120.0 | 200 (numpy, square) | 60% | 50% | 1.00 | 2.50 | 2.50 |" in text


def test_vector_extensions_names_the_notable_flags_in_order():
    cpuinfo = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n"
               "flags\t\t: fpu sse2 avx512_fp16 avx2 avx512f avx512_vnni amx_tile\n")
    assert vector_extensions(cpuinfo) == ("avx2", "avx512f", "avx512_vnni", "avx512_fp16")
    assert vector_extensions("model name\t: no flags line\n") == ()
    described = MachineInfo("cpu", 2, "3.11", {}, "host", (0.0, 0.0, 0.0), vector_extensions=("avx2",))
    assert described.cpu_described == "cpu, 2 cores (avx2)"
    assert MachineInfo("cpu", 2, "3.11", {}, "host", (0.0, 0.0, 0.0)).cpu_described == "cpu, 2 cores"


def test_a_level_run_in_rounds_reports_the_median_of_their_percentiles_and_the_range_of_their_p99s():
    def run(p99: float, jobs: int) -> OpenLoop:
        timeline = [JobTimeline(f"{p99}-{i}", "s", 0.0, 0.001, 0.01) for i in range(jobs)]
        return OpenLoop(0.5, 100.0, 99.0, jobs, p99 / 4, p99 / 2, p99, 3.0, 8.0, timeline)

    point = over_rounds([run(40.0, 10), run(400.0, 20), run(50.0, 30)])  # one round with a stall
    assert (point.p50_ms, point.p95_ms, point.p99_ms) == (12.5, 25.0, 50.0)
    assert point.p99_range == (40.0, 400.0)
    assert point.jobs == 60 and len(point.timeline) == 60  # the hops are taken over every round's jobs
    alone = run(12.0, 5)
    assert over_rounds([alone]) is alone and alone.p99_range is None
    result = ModelResult("vision", 64)
    result.alone, result.open_loop = over_rounds([run(12.0, 5), run(14.0, 5), run(13.0, 5)]), [point]
    info = MachineInfo("cpu", 2, "3.11", {}, "host", (0.0, 0.0, 0.0))
    report = markdown([result], info, command="x", total_s=1.0, quick=False, transport_mode="x", load="raw", notes=[],
                      burst_s=2.0, repeats=7, open_loop_s=5.0, latency_rounds=3)
    assert "| 50.0 | 40.0–400.0 |" in report and "| 13.0 | 12.0–14.0 |" in report


def test_the_cores_table_gives_each_level_s_median_cores_per_process_and_what_the_rest_took():
    def run(service: float, busy: float, cores: dict[str, float] | None = None) -> OpenLoop:
        return OpenLoop(0.75, 300.0, 300.0, 10, 90.0, 140.0, 160.0, 3.0, 10.0,
                        cores=cores if cores is not None else {"service": service, "broker": 0.25,
                                                               "load generator": 0.15, "machine": busy})

    point = over_rounds([run(1.4, 1.9), run(1.5, 2.2), run(1.2, 1.75)])
    assert point.cores == {"broker": 0.25, "load generator": 0.15, "machine": 1.9, "service": 1.4}
    partly = over_rounds([run(1.0, 1.0), run(1.0, 1.0, {"service": 1.0, "machine": 1.0})])
    assert partly.cores == {"machine": 1.0, "service": 1.0}  # a process metered in some rounds only is left out
    result = ModelResult("text", 32)
    result.open_loop = [point]
    info = MachineInfo("cpu", 2, "3.11", {}, "host", (0.0, 0.0, 0.0))
    report = markdown([result], info, command="x", total_s=1.0, quick=False, transport_mode="x", load="raw", notes=[],
                      burst_s=2.0, repeats=7, open_loop_s=5.0, latency_rounds=3)
    # the rest: the median of the rounds' own (0.10, 0.30, 0.15), not 1.90 − 1.40 − 0.25 − 0.15 = 0.10 of the medians
    assert "| 75% | 1.40 | 0.25 | 0.15 | – | 0.15 | 1.90 |" in report
    result.open_loop = [run(1.0, 1.0, {})]
    unmetered = markdown([result], info, command="x", total_s=1.0, quick=False, transport_mode="x", load="raw",
                         notes=[], burst_s=2.0, repeats=7, open_loop_s=5.0, latency_rounds=3)
    assert "What ran on the cores" not in unmetered
