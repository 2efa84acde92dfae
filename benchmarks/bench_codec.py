"""The compiled codec against the pure-Python reference (tests/models/ref_codec.py), same run.

    .venv/bin/python -m pytest benchmarks/bench_codec.py --benchmark-only

Workload: 10,000 QoS 0 PUBLISH frames (MQTT 3.1.1) of 64 bytes each, whole frame: 2-byte fixed
header, 2-byte topic length, a 24-byte topic ("sensors/0000/temperature") and a 36-byte payload.
"same topic" repeats one topic (one device's stream; the parser caches the last topic); "100
topics" cycles through 100 topics of the same length, so that cache never hits.

parse:  one round feeds the whole 640,000-byte stream to a fresh FrameParser (and, for
        "64k chunks", in 65,536-byte pieces as a socket would deliver it) or to
        ref_codec.decode_publish_stream.
encode: one round encodes the 10,000 frames, one call each, with encode_publish or
        ref_codec.encode_publish.

Packets/s and MB/s come from the median round time (the mean is swayed by garbage collections
of the 10,000 packets a round creates and by other processes on a shared machine; it is kept in
extra_info as mean_s); each compiled figure is also given as a ratio to the reference
(compiled / reference throughput). They are printed after each benchmark and
stored in the benchmark's extra_info (visible with --benchmark-json).
"""
import os
import sys

import pytest

from cymqtt._fast.codec import FrameParser, encode_publish

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from models import ref_codec  # noqa: E402

N = 10_000
FRAME = 64
TOPIC_LEN = 24
PAYLOAD = bytes(range(FRAME - 4 - TOPIC_LEN))           # 36 bytes

TOPICS = {
    "same topic": ["sensors/0000/temperature"] * N,
    "100 topics": [f"sensors/{i % 100:04d}/temperature" for i in range(N)],
}
STREAMS = {name: b"".join(encode_publish(t, PAYLOAD) for t in topics)
           for name, topics in TOPICS.items()}
for _stream in STREAMS.values():
    assert len(_stream) == N * FRAME

_results: dict = {}     # (op, workload) -> {impl: median seconds}


def _record(benchmark, capsys, op, workload, impl):
    stats = benchmark.stats
    if stats is None:                                   # --benchmark-disable
        return
    median = stats.stats.median
    pps = N / median
    mbps = N * FRAME / median / 1e6
    benchmark.extra_info.update(op=op, workload=workload, impl=impl, frames=N,
                                frame_bytes=FRAME, median_s=median, mean_s=stats.stats.mean,
                                packets_per_s=round(pps),
                                mb_per_s=round(mbps, 1))
    times = _results.setdefault((op, workload), {})
    times[impl] = median
    line = f"{op:6} {workload:10} {impl:22} {pps:>12,.0f} packets/s {mbps:>8.1f} MB/s"
    ref = times.get("reference")
    if ref is not None and impl != "reference":
        benchmark.extra_info["ratio_vs_reference"] = round(ref / median, 1)
        line += f"   x{ref / median:.1f} vs reference"
    with capsys.disabled():
        print("\n" + line)


# The reference runs first in each group, so the compiled rows can print their ratio.

@pytest.mark.parametrize("workload", list(TOPICS))
def test_parse_reference(benchmark, capsys, workload):
    data = STREAMS[workload]
    packets, rest = benchmark(ref_codec.decode_publish_stream, data, 4)
    assert len(packets) == N and rest == b""
    _record(benchmark, capsys, "parse", workload, "reference")


@pytest.mark.parametrize("workload", list(TOPICS))
def test_parse_compiled(benchmark, capsys, workload):
    data = STREAMS[workload]

    def run():
        return FrameParser(4).feed(data)

    packets = benchmark(run)
    assert len(packets) == N and packets[-1].topic == TOPICS[workload][-1]
    _record(benchmark, capsys, "parse", workload, "FrameParser")


@pytest.mark.parametrize("workload", list(TOPICS))
def test_parse_compiled_64k_chunks(benchmark, capsys, workload):
    data = STREAMS[workload]
    chunks = [data[i:i + 65_536] for i in range(0, len(data), 65_536)]

    def run():
        parser = FrameParser(4)
        out = []
        for chunk in chunks:
            out += parser.feed(chunk)
        return out

    packets = benchmark(run)
    assert len(packets) == N
    _record(benchmark, capsys, "parse", workload, "FrameParser 64k chunks")


@pytest.mark.parametrize("workload", list(TOPICS))
def test_encode_reference(benchmark, capsys, workload):
    topics = TOPICS[workload]
    enc = ref_codec.encode_publish

    def run():
        return [enc(t, PAYLOAD) for t in topics]

    frames = benchmark(run)
    assert b"".join(frames) == STREAMS[workload]
    _record(benchmark, capsys, "encode", workload, "reference")


@pytest.mark.parametrize("workload", list(TOPICS))
def test_encode_compiled(benchmark, capsys, workload):
    topics = TOPICS[workload]
    enc = encode_publish

    def run():
        return [enc(t, PAYLOAD) for t in topics]

    frames = benchmark(run)
    assert b"".join(frames) == STREAMS[workload]
    _record(benchmark, capsys, "encode", workload, "encode_publish")
