"""The Prometheus side of the metrics tests: scrapes with curl, and a real Prometheus server.

:func:`scrape` fetches a page of the metrics endpoint with curl, as an operator would;
:func:`parse` reads the text format into samples. :func:`check_metrics` runs ``promtool check
metrics`` on a scrape.

The ``prometheus`` fixture is a factory of real Prometheus servers (``/usr/bin/prometheus``, the
Debian package ``prometheus``) on a free loopback port, scraping the given targets every second,
with their data in a temporary directory; each is killed by PID and its data removed when the
test ends. :meth:`Prometheus.wait_until` polls its HTTP API (``/api/v1/query``) until a query's
result satisfies a predicate, within a bounded time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import attrs
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.serving import free_port

PROMETHEUS: Final = "/usr/bin/prometheus"
PROMTOOL: Final = "/usr/bin/promtool"
#: The most any wait on Prometheus takes (its start, a query's result).
PROMETHEUS_TIMEOUT: Final = 60.0
#: A scrape's deadline (curl's --max-time): generous, this is no speed test.
SCRAPE_TIMEOUT: Final = 5.0

#: (metric name, sorted label pairs) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@attrs.frozen
class Scrape:
    """One HTTP GET by curl: the status, the body, and curl's total time in seconds."""

    status: int
    body: str
    seconds: float


def scrape(port: int, path: str = "/metrics", *headers: str) -> Scrape:
    """GET ``http://127.0.0.1:PORT/PATH`` with curl (at most :data:`SCRAPE_TIMEOUT` s)."""
    argv = [
        "curl",
        "-sS",
        "--max-time",
        str(SCRAPE_TIMEOUT),
        "-w",
        "%{stderr}%{http_code} %{time_total}",
    ]
    for header in headers:
        argv += ["-H", header]
    done = subprocess.run(
        [*argv, f"http://127.0.0.1:{port}{path}"],
        capture_output=True,
        text=True,
        timeout=SCRAPE_TIMEOUT + 5,
        check=False,
    )
    assert done.returncode == 0, f"curl {path}: exit {done.returncode}: {done.stderr}"
    status, seconds = done.stderr.split()[-2:]
    return Scrape(int(status), done.stdout, float(seconds))


def parse(text: str) -> Samples:
    """The samples of a text-format scrape."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = float(sample.value)
    return samples


def counter(samples: Samples, name: str, **labels: str) -> float:
    """The value of a counter's sample, 0 when it has none: a labelled counter has no sample
    until something is counted with those labels. (Not a ``default=`` keyword of :func:`value`:
    callers pass their labels as ``**dict[str, str]``, which a typed keyword would clash with.)"""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def value(samples: Samples, name: str, **labels: str) -> float:
    """The value of one sample; AssertionError naming what there is when it is absent."""
    key = (name, tuple(sorted(labels.items())))
    if key not in samples:
        present = sorted(str(dict(k[1])) for k in samples if k[0] == name)
        msg = f"no {name}{labels}; {name} has {present}"
        raise AssertionError(msg)
    return samples[key]


def check_metrics(text: str) -> str:
    """What ``promtool check metrics`` says about a scrape (empty when nothing is wrong); asserts
    it exits 0."""
    done = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, f"promtool check metrics: {done.stdout}{done.stderr}"
    return done.stdout + done.stderr


class Prometheus:
    """One running Prometheus server and its HTTP API."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    def _get(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.port}{path}"
        with urllib.request.urlopen(url, timeout=10) as answer:
            return json.load(answer)

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The instant vector ``expression`` gives now (``/api/v1/query``)."""
        answer = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": expression}))
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def values(self, expression: str) -> list[float]:
        """The values of ``expression``'s result, one per series."""
        return [float(series["value"][1]) for series in self.query(expression)]

    def wait_until(
        self,
        expression: str,
        predicate: Callable[[list[float]], bool],
        timeout: float = PROMETHEUS_TIMEOUT,
    ) -> list[float]:
        """Poll ``expression`` until ``predicate`` accepts its values; those values."""
        deadline = time.monotonic() + timeout
        got: list[float] = []
        while time.monotonic() < deadline:
            got = self.values(expression)
            if predicate(got):
                return got
            assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text()[-2000:]}"
            time.sleep(0.5)
        msg = f"{expression}: still {got} after {timeout} s"
        raise AssertionError(msg)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + PROMETHEUS_TIMEOUT
        url = f"http://127.0.0.1:{self.port}/-/ready"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError):
                pass
            assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "prometheus not ready in time"
            time.sleep(0.2)


def _config(targets: Sequence[str]) -> str:
    quoted = ", ".join(f"'{target}'" for target in targets)
    return (
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: activator\n"
        f"    static_configs:\n      - targets: [{quoted}]\n"
    )


@pytest.fixture
def prometheus() -> Iterator[Callable[[Sequence[str]], Prometheus]]:
    """A factory of real Prometheus servers scraping ``targets`` (``host:port``) every second.

    Without Prometheus installed, the test is skipped; under CI=true it fails instead (the
    Makefile installs it: a test that cannot run must not pass unseen)."""
    if shutil.which(PROMETHEUS) is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{PROMETHEUS} is not installed (Debian package prometheus)")
        pytest.skip(f"{PROMETHEUS} is not installed (Debian package prometheus)")
    started: list[tuple[Prometheus, Path]] = []

    def start(targets: Sequence[str]) -> Prometheus:
        directory = Path(tempfile.mkdtemp(prefix="activator-prometheus-"))
        config = directory / "prometheus.yml"
        config.write_text(_config(targets), encoding="utf-8")
        port = free_port()
        log = directory / "log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    PROMETHEUS,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=directory,
            )
        server = Prometheus(proc, port, log)
        started.append((server, directory))
        server.wait_ready()
        return server

    yield start
    for server, directory in started:
        if server.proc.poll() is None:
            server.proc.terminate()
            try:
                server.proc.wait(30)
            except subprocess.TimeoutExpired:
                server.proc.kill()
                server.proc.wait()
        shutil.rmtree(directory, ignore_errors=True)
