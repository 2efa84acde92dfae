"""OutboundWindow (compiled) against the plain-Python model (tests/models/ref_inflight.py).

QoS 1 cycles as the session layer drives them, 1,000 messages per round:

- ``pingpong``: submit -> packet id, puback(id), release() (nothing queued): a subscriber that
  keeps up.
- ``backlog``: the window is full (32 in flight) with a queue behind it: submit (queued),
  puback(oldest), release() moves one message into the window: a subscriber that lags.

Run: .venv/bin/python -m pytest -q benchmarks/bench_inflight.py --benchmark-only
Each benchmark records messages per second (from the median round) in its extra_info; the compiled/model ratio per
scenario is printed at the end of the module and stored in the compiled run's extra_info.
Timings are not asserted anywhere (DESIGN: benchmarks are not tests).
"""
import collections
import os
import sys

import pytest

from cymqtt._fast.inflight import OutboundWindow

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))
from models import ref_inflight  # noqa: E402

N = 1000          # messages per round
WINDOW = 32       # the default max_inflight
BACKLOG = 100     # messages kept queued behind the full window

IMPLS = {"compiled": OutboundWindow, "model": ref_inflight.OutboundWindow}
_rates: dict = {}


def pingpong(w, msgs):
    submit, puback, release = w.submit, w.puback, w.release
    for m in msgs:
        puback(submit(m, 1, True))
        release()


def make_backlog(cls):
    """A window with WINDOW messages in flight and BACKLOG queued; the pids in send order."""
    w = cls(WINDOW, 1000)
    pids = collections.deque()
    for i in range(WINDOW + BACKLOG):
        pid = w.submit(i, 1, True)
        if pid > 0:
            pids.append(pid)
    assert (w.inflight_count, w.queued_count) == (WINDOW, BACKLOG)
    return w, pids


def backlog(w, pids, msgs):
    submit, puback, release = w.submit, w.puback, w.release
    popleft, append = pids.popleft, pids.append
    for m in msgs:
        submit(m, 1, True)                   # queued behind the full window
        puback(popleft())
        for pid, _qos, _msg in release():
            append(pid)


@pytest.fixture(scope="module", autouse=True)
def report(request):
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    lines = []
    for scenario in ("pingpong", "backlog"):
        c, m = _rates.get((scenario, "compiled")), _rates.get((scenario, "model"))
        if c and m:
            lines.append(f"inflight {scenario:8s}: compiled {c:12,.0f} msg/s   "
                         f"model {m:12,.0f} msg/s   ratio {c / m:5.1f}x")
    if tr is None or not lines:
        return
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    with capman.global_and_fixture_disabled():          # teardown output is captured otherwise
        tr.write_line("")
        for line in lines:
            tr.write_line(line)


def _record(benchmark, scenario, impl):
    stats = getattr(benchmark, "stats", None)
    if stats is None:                     # --benchmark-disable: nothing was timed
        return
    rate = N / stats.stats.median         # the median: GC pauses and neighbours sway the mean
    _rates[(scenario, impl)] = rate
    benchmark.extra_info["msgs_per_sec"] = round(rate)
    benchmark.extra_info["mean_s"] = stats.stats.mean
    other = _rates.get((scenario, "model"))
    if impl == "compiled" and other:
        benchmark.extra_info["ratio_vs_model"] = round(rate / other, 2)


# The model runs first so that the compiled run can record the ratio.
@pytest.mark.parametrize("impl", ["model", "compiled"])
def test_pingpong(benchmark, impl):
    benchmark.group = "inflight-qos1-pingpong"
    w = IMPLS[impl](WINDOW, 1000)
    msgs = [object() for _ in range(N)]
    benchmark(pingpong, w, msgs)
    assert len(w) == 0
    _record(benchmark, "pingpong", impl)


@pytest.mark.parametrize("impl", ["model", "compiled"])
def test_backlog(benchmark, impl):
    benchmark.group = "inflight-qos1-backlog"
    w, pids = make_backlog(IMPLS[impl])
    msgs = [object() for _ in range(N)]
    benchmark(backlog, w, pids, msgs)
    assert (w.inflight_count, w.queued_count) == (WINDOW, BACKLOG)
    _record(benchmark, "backlog", impl)
