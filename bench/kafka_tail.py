"""Consumer-receipt clock: reads topics from the beginning while a workload runs and writes,
for every record, `receipt_ms <TAB> record timestamp_ms <TAB> CorrelationId` (or `-`).

  kafka_tail.py --brokers H:P --out FILE TOPIC...

Stops on SIGTERM (after writing what it has).
"""

import argparse
import re
import signal
import sys
import time

from confluent_kafka import Consumer, TopicPartition

CORRELATION_RE = re.compile(rb'"CorrelationId":"([^"]+)"')
stop = False


def on_term(*_):
    global stop
    stop = True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("topics", nargs="+")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    c = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": "bench-tail",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 10,
        "fetch.min.bytes": 1,
        "log_level": 3,
    })
    assignment = []
    for t in args.topics:
        md = c.list_topics(t, timeout=20)
        for p in md.topics[t].partitions:
            assignment.append(TopicPartition(t, p, 0))
    c.assign(assignment)
    out = open(args.out, "w")
    print("ready", flush=True)
    while not stop:
        batch = c.consume(num_messages=1000, timeout=0.05)
        t = time.time() * 1000.0
        for m in batch:
            if m.error():
                continue
            mt = CORRELATION_RE.search(m.value() or b"")
            cid = mt.group(1).decode() if mt else "-"
            out.write(f"{t:.3f}\t{m.timestamp()[1]}\t{cid}\n")
        if batch:
            out.flush()
    out.close()
    c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
