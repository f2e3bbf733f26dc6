"""Building blocks of the benchmark harness: processes on loopback (tansu, genesys-sim, the
bridge, the Node.js baseline, the raw producer), /proc sampling, and reading Kafka back.

Only the standard library and PyPI confluent-kafka (bench/.venv) are used.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")

CORRELATION_RE = re.compile(rb'"CorrelationId":"([^"]+)"')


class BenchError(RuntimeError):
    """A leg could not run, or a consistency check failed."""


def now_ms() -> float:
    return time.time() * 1000.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, timeout: float, condition, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise BenchError(f"timed out after {timeout:.0f} s waiting for: {what}")


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------
# /proc


@dataclass
class ProcStat:
    rss_kib: int
    hwm_kib: int
    cpu_s: float  # utime + stime


def proc_stat(pid: int) -> ProcStat | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rss = hwm = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    # Fields after the command name (which may contain spaces) start at field 3.
    rest = stat.rsplit(")", 1)[1].split()
    utime, stime = int(rest[11]), int(rest[12])
    return ProcStat(rss, hwm, (utime + stime) / CLK_TCK)


class Sampler(threading.Thread):
    """Samples a process's /proc every `interval` s; keeps the last sample alive."""

    def __init__(self, pid: int, interval: float = 0.2):
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.last: ProcStat | None = proc_stat(pid)
        self.peak_rss_kib = self.last.rss_kib if self.last else 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            s = proc_stat(self.pid)
            if s is None:
                return
            self.last = s
            self.peak_rss_kib = max(self.peak_rss_kib, s.rss_kib)
            self._halt.wait(self.interval)

    def stop(self) -> ProcStat | None:
        s = proc_stat(self.pid)
        if s is not None:
            self.last = s
        self._halt.set()
        return self.last


# ------------------------------------------------------------------------------------------------
# Child processes


RUNNING: list = []  # every Proc started and not yet stopped (cleanup on exit)


class Proc:
    """A child process with its output in a log file, stopped by its own pid only."""

    def __init__(self, name: str, args: list[str], log: Path, cwd: Path | None = None,
                 env: dict | None = None, stdout_pipe: bool = False):
        self.name = name
        self.args = [str(a) for a in args]
        self.log_path = log
        self.log = open(log, "ab")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.popen = subprocess.Popen(
            self.args,
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self.log,
            stderr=self.log,
        )
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def exit_code(self):
        return self.popen.poll()

    def send_signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0, sig=signal.SIGTERM):
        if self.alive():
            try:
                os.kill(self.pid, sig)
                self.popen.wait(timeout)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            self.popen.wait(10)
        if self in RUNNING:
            RUNNING.remove(self)
        self.log.close()
        return self.popen.returncode

    def kill(self):
        return self.stop(timeout=0, sig=signal.SIGKILL)

    def tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])


# ------------------------------------------------------------------------------------------------
# tansu


def tansu_bin() -> str:
    if os.environ.get("TANSU_BIN"):
        return os.environ["TANSU_BIN"]
    cached = Path.home() / ".cargo/bin/tansu"
    if cached.exists():
        return str(cached)
    raise BenchError("the tansu broker is missing: `cargo install tansu --version 0.6.0 --features dynostore,libsql` "
                     "(scripts/test.sh installs it)")


class Tansu:
    """A tansu broker on a free loopback port. `engine` is "memory" (fast, lost on restart) or
    "sqlite" (data/tansu.db in its directory; survives `restart`)."""

    def __init__(self, workdir: Path, engine: str = "memory"):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        self.engine = engine
        self.proc: Proc | None = None
        self.port = 0
        for attempt in range(5):
            self.port = free_port()
            if self._spawn():
                return
        raise BenchError(f"tansu did not start; log: {self.dir / 'tansu.log'}")

    @property
    def brokers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(self) -> bool:
        url = f"tcp://127.0.0.1:{self.port}"
        storage = "memory://tansu/" if self.engine == "memory" else "sqlite://data/tansu.db"
        self.proc = Proc("tansu", [tansu_bin(), "broker", "--listener-url", url,
                                   "--advertised-listener-url", url, "--storage-engine", storage],
                         self.dir / "tansu.log", cwd=self.dir)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not self.proc.alive():
                return False  # e.g. the port was taken meanwhile: try another one
            if listening(self.port):
                # Another process may hold the port: make sure ours is the one still running.
                time.sleep(0.2)
                return self.proc.alive()
            time.sleep(0.05)
        self.proc.kill()
        return False

    def stored_values(self, topics: list[str]) -> list[bytes]:
        """Every record value tansu's sqlite store holds for `topics`, read straight from
        `data/tansu.db` (read-only): what the broker durably has, whether or not a consumer can
        fetch it in time. tansu 0.6's sqlite engine serves a fetch of ~5 MB in ~12 s on this
        machine, so after a large backlog a consumer's re-read needs minutes (measured on the
        kafka_down run of 2026-12-07: 1,098 records per 11.8 s fetch)."""
        if self.engine != "sqlite":
            raise BenchError("stored_values needs the sqlite engine")
        import sqlite3

        db = sqlite3.connect(f"file:{self.dir / 'data' / 'tansu.db'}?mode=ro", uri=True, timeout=30)
        try:
            marks = ",".join("?" * len(topics))
            rows = db.execute(
                "select r.v from record r join topition tp on r.topition = tp.id "
                f"join topic t on tp.topic = t.id where t.name in ({marks})", list(topics))
            return [bytes(v or b"") for (v,) in rows]
        finally:
            db.close()

    def create_topics(self, topics, partitions: int = 3):
        for topic in topics:
            r = subprocess.run([tansu_bin(), "topic", "create", topic, "--partitions", str(partitions),
                                "--broker", f"tcp://127.0.0.1:{self.port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
            if r.returncode != 0:
                raise BenchError(f"tansu topic create {topic}: {r.stderr.decode(errors='replace')[-500:]}")

    def kill(self):
        if self.proc:
            self.proc.kill()

    def restart(self):
        self.kill()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._spawn():
                return
            time.sleep(0.5)
        raise BenchError("tansu did not restart on its port")

    def stop(self):
        if self.proc:
            self.proc.stop(timeout=5)


# ------------------------------------------------------------------------------------------------
# genesys-sim


def http(method: str, url: str, body=None, headers=None, timeout: float = 60.0):
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Sim:
    """The genesys-sim binary on free loopback ports."""

    def __init__(self, binary: str, workdir: Path, args: list[str], clients=("sim-client:sim-secret",)):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.clients = list(clients)
        full = [binary, "--listen", "127.0.0.1:0", "--ws-listen", "127.0.0.1:0", "--ledger-limit", "0"]
        for c in self.clients:
            full += ["--client", c]
        self.proc = Proc("genesys-sim", full + list(args), self.dir / "sim.log", stdout_pipe=True)
        line = self._read_ready_line()
        info = json.loads(line)
        self.base_url = info["baseUrl"]
        self.ws_base_url = info["wsBaseUrl"]
        # Keep draining stdout so the simulator never blocks on it.
        threading.Thread(target=self._drain, daemon=True).start()

    def _read_ready_line(self) -> str:
        result = {}

        def read():
            result["line"] = self.proc.popen.stdout.readline().decode()

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(30)
        line = result.get("line", "")
        if not line.strip():
            raise BenchError(f"genesys-sim did not start:\n{self.proc.tail()}")
        return line

    def _drain(self):
        try:
            for _ in self.proc.popen.stdout:
                pass
        except (ValueError, OSError):
            pass

    def get_json(self, path: str):
        status, body = http("GET", self.base_url + path)
        if status != 200:
            raise BenchError(f"GET {path}: {status} {body[:300]!r}")
        return json.loads(body)

    def post_json(self, path: str, body):
        status, answer = http("POST", self.base_url + path, body)
        if status != 200:
            raise BenchError(f"POST {path} {body}: {status} {answer[:300]!r}")
        return json.loads(answer)

    def fault(self, body: dict):
        return self.post_json("/sim/faults", body)

    def set_rate(self, rate: float):
        return self.post_json("/sim/rate", {"rate": rate})

    def token(self, client: str = "sim-client:sim-secret") -> str:
        basic = base64.b64encode(client.encode()).decode()
        status, body = http("POST", self.base_url + "/oauth/token", b"grant_type=client_credentials",
                            {"Authorization": f"Basic {basic}",
                             "Content-Type": "application/x-www-form-urlencoded"})
        if status != 200:
            raise BenchError(f"token: {status} {body[:200]!r}")
        return json.loads(body)["access_token"]

    def _paged(self, path: str, token: str):
        page, out = 1, []
        while True:
            status, body = http("GET", f"{self.base_url}{path}?pageSize=500&pageNumber={page}",
                                headers={"Authorization": f"Bearer {token}"})
            if status != 200:
                raise BenchError(f"GET {path}: {status}")
            doc = json.loads(body)
            out += doc.get("entities", [])
            if page >= doc.get("pageCount", 1):
                return out
            page += 1

    def topics(self, queues: bool = True, users: bool = True) -> list[str]:
        """The workload's Genesys topics: every queue's and every user's conversations."""
        token = self.token(self.clients[0])
        topics = []
        if queues:
            topics += [f"v2.routing.queues.{q['id']}.conversations" for q in self._paged("/api/v2/routing/queues", token)]
        if users:
            topics += [f"v2.users.{u['id']}.conversations" for u in self._paged("/api/v2/users", token)]
        return topics

    def channels(self, client_id: str | None = None) -> list[dict]:
        chans = self.get_json("/sim/channels")
        if client_id is not None:
            chans = [c for c in chans if c.get("clientId", c.get("client_id")) == client_id]
        return chans

    def connected_channels(self, client_id: str | None = None) -> list[str]:
        return [c["id"] for c in self.channels(client_id) if c.get("connected")]

    def ledger_events(self, since: int = 0) -> list[dict]:
        status, body = http("GET", f"{self.base_url}/sim/ledger?format=jsonl&kind=event&since={since}",
                            timeout=300)
        if status != 200:
            raise BenchError(f"ledger: {status}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def missed_events(self) -> list[dict] | None:
        """The simulator's missed log (events a live subscribed channel could not be handed);
        None when this simulator has no such endpoint."""
        status, body = http("GET", f"{self.base_url}/sim/missed?format=jsonl", timeout=300)
        if status == 404:
            return None
        if status != 200:
            raise BenchError(f"missed log: {status}")
        return [json.loads(line) for line in body.splitlines() if line.strip()]

    def ledger_total(self) -> int:
        return int(self.get_json("/sim/info")["ledgerTotal"])

    def stop(self):
        self.proc.stop(timeout=5)


# ------------------------------------------------------------------------------------------------
# Kafka


def _consumer(brokers: str, extra: dict | None = None):
    from confluent_kafka import Consumer

    conf = {"bootstrap.servers": brokers, "group.id": "bench-reader", "enable.auto.commit": False,
            "enable.partition.eof": False, "log_level": 3}
    conf.update(extra or {})
    return Consumer(conf)


class Tail:
    """A consumer tailing topics from the beginning in its own process (kafka_tail.py): the
    harness's view of what landed in Kafka and when (consumer receipt). Its output is read
    incrementally; records are deduplicated by (topic, partition, offset), so a consumer that
    re-reads after a broker restart does not invent duplicates."""

    def __init__(self, workdir: Path, brokers: str, topics: list[str], name: str = "tail", lazy: bool = False):
        import sys as _sys

        self.out = workdir / f"{name}.tsv"
        self.lazy = lazy
        log_path = workdir / f"{name}.log"
        self.proc = Proc(name, [_sys.executable, BENCH / "kafka_tail.py", "--brokers", brokers,
                                "--out", self.out, *(["--lazy"] if lazy else []), *topics], log_path)
        wait_until(f"{name} consumer ready", 30,
                   lambda: self.proc.alive() and log_path.exists() and "ready" in log_path.read_text())
        self._pos = 0
        self._buf = b""
        self.offsets: set = set()
        self.counts: dict[str, int] = {}
        # cid -> (receipt ms, record timestamp ms, received-at-ms header or None)
        self.first: dict[str, tuple[float, int, float | None]] = {}
        self.records = 0
        self.with_cid = 0
        self.last_receipt_ms: float | None = None

    def lazy_count(self) -> int:
        """Records received so far by a lazy tail (its lines are written only when it stops)."""
        try:
            return int(Path(str(self.out) + ".count").read_text().split("\t")[0])
        except (OSError, ValueError, IndexError):
            return 0

    def poll(self):
        if self.lazy and self.proc.alive():
            return
        try:
            with open(self.out, "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
        except FileNotFoundError:
            return
        self._pos += len(chunk)
        data = self._buf + chunk
        lines = data.split(b"\n")
        self._buf = lines.pop()
        for line in lines:
            t, ts, where, cid, received = line.decode().split("\t")
            if where in self.offsets:
                continue
            self.offsets.add(where)
            self.records += 1
            receipt = float(t)
            self.last_receipt_ms = receipt
            if cid != "-":
                self.with_cid += 1
                self.counts[cid] = self.counts.get(cid, 0) + 1
                if cid not in self.first:
                    self.first[cid] = (receipt, int(ts), None if received == "-" else float(received))

    def wait(self, done, stall_s: float, max_s: float, proc=None) -> bool:
        """Polls until done(self) holds (True), or nothing new arrived for stall_s, or max_s
        passed, or `proc` (the client) died and nothing arrived for a second (False)."""
        deadline = time.monotonic() + max_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            self.poll()
            if done(self):
                return True
            seen = self.lazy_count() if self.lazy else self.records
            if seen != last:
                last, since = seen, time.monotonic()
            elif time.monotonic() - since >= stall_s:
                return False
            elif proc is not None and not proc.alive() and time.monotonic() - since >= 1:
                return False
            time.sleep(0.05)
        return False

    def stop(self):
        time.sleep(0.3)
        self.proc.stop(timeout=60)
        self.poll()


def read_all(brokers: str, topics: list[str], idle_s: float = 1.5, timeout: float = 60.0) -> list[bytes]:
    """Every record value in `topics` (small topics: read until idle_s without a record)."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    c = _consumer(brokers)
    assignment = []
    for t in topics:
        md = c.list_topics(t, timeout=20)
        assignment += [TopicPartition(t, p, OFFSET_BEGINNING) for p in md.topics[t].partitions]
    c.assign(assignment)
    values, last = [], time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() - last < idle_s and time.monotonic() < deadline:
        for m in c.consume(num_messages=1000, timeout=0.2):
            if not m.error():
                values.append(m.value() or b"")
                last = time.monotonic()
    c.close()
    return values


def correlation_id(value: bytes) -> str | None:
    m = CORRELATION_RE.search(value)
    return m.group(1).decode() if m else None


@dataclass
class Accounting:
    """What landed in Kafka compared with the simulator's ledger of events sent."""

    ledger_events: int = 0  # distinct correlation ids the simulator handed to the client's sockets
    landed_matching: int = 0  # records whose CorrelationId is in that ledger
    lost: int = 0  # ledger ids with no record
    duplicated: int = 0  # records beyond the first per ledger id
    other_records: int = 0  # records matching no ledger event (heartbeats, system frames, gaps)
    lost_ids: list = field(default_factory=list)


def account(ledger: list[dict], tail: Tail) -> Accounting:
    expected = {e["correlationId"] for e in ledger if e.get("correlationId")}
    seen = {cid: n for cid, n in tail.counts.items() if cid in expected}
    lost = [cid for cid in expected if cid not in seen]
    landed = sum(seen.values())
    return Accounting(
        ledger_events=len(expected),
        landed_matching=landed,
        lost=len(lost),
        duplicated=sum(n - 1 for n in seen.values()),
        other_records=tail.records - landed,
        lost_ids=lost[:5],
    )


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]
