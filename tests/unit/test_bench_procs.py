"""What the benchmarks read about the local broker and the processes they meter (bench/procs.py)."""

import os
import threading

from bench.broker_cpu import _jit_and_rest
from bench.procs import broker_jvm_opts, thread_cpu_seconds


def test_the_broker_jvm_options_are_kafka_sh_s_default_unless_set(monkeypatch):
    monkeypatch.delenv("AIAAS_KAFKA_JVM_OPTS", raising=False)
    assert broker_jvm_opts() == "-XX:+UseG1GC -XX:TieredStopAtLevel=1"  # read from infra/kafka/kafka.sh
    monkeypatch.setenv("AIAAS_KAFKA_JVM_OPTS", "-XX:+UseG1GC")
    assert broker_jvm_opts() == "-XX:+UseG1GC"


def test_thread_cpu_names_every_thread_of_a_process():
    stop = threading.Event()
    worker = threading.Thread(target=stop.wait)
    worker.start()
    try:
        used = thread_cpu_seconds(os.getpid())
    finally:
        stop.set()
        worker.join()
    thread_ids = {tid for tid, _name in used}
    assert os.getpid() in thread_ids and worker.native_id in thread_ids  # the main thread's id is the pid
    assert all(name and seconds >= 0 for (_tid, name), seconds in used.items())


def test_the_jit_compiler_threads_are_told_apart_from_the_rest_of_the_jvm():
    before = {(1, "C2 CompilerThre"): 1.0, (2, "data-plane-kafk"): 2.0}
    after = {(1, "C2 CompilerThre"): 1.5, (2, "data-plane-kafk"): 2.25, (3, "C1 CompilerThre"): 0.25}
    assert _jit_and_rest(before, after) == (0.75, 0.25)


def test_the_core_meter_gives_each_named_process_s_cores_and_the_machine_s_since_it_started():
    import time

    from bench.procs import MACHINE, core_meter

    since = core_meter({"this process": os.getpid(), "not started": None, "gone": 2**22 + 12345})
    cpu_started, wall_started = time.process_time(), time.monotonic()
    while time.process_time() < cpu_started + 0.3:  # keep this process busy for a while
        pass
    used = since()
    cores = (time.process_time() - cpu_started) / (time.monotonic() - wall_started)
    assert set(used) == {"this process", MACHINE}  # one not started, or gone, is left out
    assert abs(used["this process"] - cores) < 0.1  # CPU seconds per second (/proc's ticks are 10 ms)
    assert used[MACHINE] >= used["this process"] - 0.1  # the machine's busy cores include this process's
