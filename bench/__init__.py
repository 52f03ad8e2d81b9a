"""Benchmarks: programs, not timed tests (see DESIGN.md "Performance: how we measure").

`bench/run.py` is the harness (runtime ceiling, transport ceiling, naive consumer, service,
tracing cost, per model type); `bench/text_padding.py` measures the text batching alone.
"""
