"""Consumer-receipt clock: reads topics from the beginning while a workload runs and writes,
for every record: `receipt_ms <TAB> record timestamp_ms <TAB> topic:partition:offset <TAB>
CorrelationId <TAB> received-at-ms header` (`-` when the value has no CorrelationId or the record
no such header; the bridge stamps `received-at-ms` when it read the frame off the socket).

  kafka_tail.py --brokers H:P --out FILE [--lazy] TOPIC...

A record's receipt time is when poll() handed it over (records already fetched with it share
that time). Stops on SIGTERM, after writing what it has.

--lazy keeps the records in memory and writes the lines only when stopped (per batch it just
appends the batch to a list and rewrites FILE.count with `records <TAB> last receipt_ms`), so
that at 100,000+ records/s the consumer keeps up and takes little CPU from the client under test.
"""

import argparse
import re
import signal
import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

CORRELATION_RE = re.compile(rb'"CorrelationId":"([^"]+)"')
stop = False


def on_term(*_):
    global stop
    stop = True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--lazy", action="store_true")
    ap.add_argument("topics", nargs="+")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    c = Consumer({
        "bootstrap.servers": args.brokers,
        "group.id": "bench-tail",
        "enable.auto.commit": False,
        "fetch.wait.max.ms": 5,
        "fetch.min.bytes": 1,
        "log_level": 3,
    })
    assignment = []
    for t in args.topics:
        md = c.list_topics(t, timeout=20)
        assignment += [TopicPartition(t, p, OFFSET_BEGINNING) for p in md.topics[t].partitions]
    c.assign(assignment)
    out = open(args.out, "w")
    print("ready", flush=True)
    search = CORRELATION_RE.search

    def lines_of(t, batch):
        lines = []
        for m in batch:
            if m.error():
                continue
            mt = search(m.value() or b"")
            cid = mt.group(1).decode() if mt else "-"
            received = "-"
            for key, value in m.headers() or ():
                if key == "received-at-ms" and value:
                    received = value.decode()
            lines.append(f"{t:.3f}\t{m.timestamp()[1]}\t{m.topic()}:{m.partition()}:{m.offset()}\t{cid}\t{received}\n")
        return "".join(lines)

    kept = []
    count = 0
    while not stop:
        first = c.poll(0.1)  # returns as soon as one record is there
        if first is None:
            continue
        t = time.time() * 1000.0
        batch = [first] + c.consume(num_messages=100000, timeout=0)  # what was fetched with it
        if args.lazy:
            kept.append((t, batch))
            count += len(batch)
            with open(args.out + ".count", "w") as f:
                f.write(f"{count}\t{t:.3f}\n")
        else:
            out.write(lines_of(t, batch))
            out.flush()
    for t, batch in kept:
        out.write(lines_of(t, batch))
    out.close()
    c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
