#!/usr/bin/env python3
"""Does the test broker move a consumer group's partition to the survivor when its owner dies?

Evidence for issue #17 (standby replica), whose leadership would be Kafka group membership on a
one-partition coordination topic: the member assigned partition 0 leads. This probe starts a
broker (tansu, `TANSU_BIN` or the one on PATH, memory storage, a loopback port), two group
members in their own processes (confluent-kafka, session.timeout.ms=6000), waits until one owns
the partition, then either SIGKILLs the owner (`--crash`, node loss) or lets it close and leave
the group (`--leave`, a rolling update) and waits up to `--wait` seconds for the survivor to be
assigned the partition.

Exit status 0: the survivor got the partition (failover works); 1: it did not; 2: setup failed.

    python3 -m venv /tmp/probe && /tmp/probe/bin/pip install -r bench/requirements.txt
    /tmp/probe/bin/python scripts/probe-group-failover.py --crash
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

MEMBER = r"""
import sys, time
from confluent_kafka import Consumer
name, servers, stop_file = sys.argv[1], sys.argv[2], sys.argv[3]
def log(*a):
    print(f"{time.time():.3f}", name, *a, flush=True)
def on_assign(c, parts):
    log("ASSIGNED", ",".join(str(p.partition) for p in parts) or "-")
def on_revoke(c, parts):
    log("REVOKED", ",".join(str(p.partition) for p in parts) or "-")
c = Consumer({"bootstrap.servers": servers, "group.id": "coordination",
              "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
              "enable.auto.commit": False})
c.subscribe(["coordination"], on_assign=on_assign, on_revoke=on_revoke)
import os
while not os.path.exists(stop_file):
    c.poll(0.2)
log("LEAVING")
c.close()
log("LEFT")
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def owner(logs):
    """The member whose latest assignment holds partition 0, from the members' logs."""
    events = []
    for name, path in logs.items():
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[2] == "ASSIGNED":
                    events.append((float(parts[0]), name, parts[3]))
    current = {}
    for _, name, assigned in sorted(events):
        current[name] = assigned
    owners = [n for n, a in current.items() if "0" in a.split(",")]
    return owners[0] if len(owners) == 1 else None


def wait_until(pred, timeout):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--crash", action="store_true", help="SIGKILL the owner")
    mode.add_argument("--leave", action="store_true", help="the owner closes (LeaveGroup)")
    ap.add_argument("--wait", type=float, default=45.0, help="seconds to wait for failover")
    args = ap.parse_args()

    tansu = os.environ.get("TANSU_BIN") or shutil.which("tansu")
    if not tansu:
        print("tansu not found (TANSU_BIN or PATH)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="group-failover-")
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    procs = []
    try:
        broker = subprocess.Popen(
            [tansu, "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=open(os.path.join(work, "broker.log"), "w"), stderr=subprocess.STDOUT)
        procs.append(broker)

        def listening():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return True
            except OSError:
                return False

        if not wait_until(listening, 20):
            print("broker did not listen", file=sys.stderr)
            return 2
        subprocess.run([tansu, "topic", "create", "coordination", "--partitions", "1",
                        "--broker", url], check=True, capture_output=True)
        script = os.path.join(work, "member.py")
        with open(script, "w") as f:
            f.write(MEMBER)
        logs, members = {}, {}
        for name in ("A", "B"):
            logs[name] = os.path.join(work, f"{name}.log")
            p = subprocess.Popen(
                [sys.executable, script, name, f"127.0.0.1:{port}",
                 os.path.join(work, f"{name}.stop")],
                stdout=open(logs[name], "w"), stderr=subprocess.STDOUT)
            members[name] = p
            procs.append(p)
            # Each member owns the partition once in turn: A alone, then after B joins.
            if not wait_until(lambda: owner(logs), 30):
                print(f"no member owns the partition after {name} joined", file=sys.stderr)
                return 2
        time.sleep(3)  # let the join rebalance settle
        first = wait_until(lambda: owner(logs), 30)
        survivor = "B" if first == "A" else "A"
        t0 = time.time()
        if args.crash:
            members[first].send_signal(signal.SIGKILL)
            how = "SIGKILL"
        else:
            open(os.path.join(work, f"{first}.stop"), "w").close()
            how = "close (LeaveGroup)"
        got = wait_until(lambda: owner({survivor: logs[survivor]}) == survivor, args.wait)
        for name in logs:
            with open(logs[name]) as f:
                sys.stdout.write(f.read())
        if got:
            print(f"owner {first} {how}: {survivor} owns the partition after "
                  f"{time.time() - t0:.1f} s")
            return 0
        print(f"owner {first} {how}: {survivor} does not own the partition after "
              f"{args.wait:.0f} s (failover failed)")
        return 1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()  # SIGKILL, never SIGTERM, for tansu (see the README)
                p.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
