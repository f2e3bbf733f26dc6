"""The raw limit: a librdkafka producer (PyPI confluent-kafka) pushing pre-built payloads into
the broker, with no WebSocket and no parsing. Idempotent, acks=all, message.timeout.ms=0: the
producer settings the bridge uses; every other property is librdkafka's default, as for the
bridge.

  raw_producer.py --brokers H:P --topic T --payloads FILE --mode burst|paced --out STATS.json

FILE has one record per line: offset_ms <TAB> key <TAB> value (value is the frame text). In
`burst` mode every record is produced as fast as librdkafka takes them; in `paced` mode record i
is produced at start + offset_ms(i) (the simulator's relative send times), so its latency can be
compared with the clients' at the same rate.
"""

import argparse
import json
import resource
import signal
import sys
import time

from confluent_kafka import Producer


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--payloads", required=True)
    ap.add_argument("--mode", choices=["burst", "paced"], default="burst")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    records = []
    with open(args.payloads, "rb") as f:
        for line in f:
            offset, key, value = line.rstrip(b"\n").split(b"\t", 2)
            records.append((float(offset), key or None, value))

    acked = 0
    errors = 0
    last_ack_ms = 0.0

    def on_delivery(err, _msg):
        nonlocal acked, errors, last_ack_ms
        if err is None:
            acked += 1
            last_ack_ms = time.time() * 1000.0
        else:
            errors += 1

    producer = Producer({
        "bootstrap.servers": args.brokers,
        "enable.idempotence": True,
        "acks": "all",
        "message.timeout.ms": 0,
        "client.id": "bench-raw-producer",
    })
    # Connect, learn the topic's partitions and get the idempotent producer id before the clock
    # starts (the clients under test are connected before their workload starts, too).
    producer.list_topics(args.topic, timeout=20)
    producer.poll(1.0)

    cpu0 = cpu_s()
    t0_ms = time.time() * 1000.0
    topic = args.topic
    produce = producer.produce
    poll = producer.poll
    if args.mode == "burst":
        for _, key, value in records:
            while True:
                try:
                    produce(topic, value, key, on_delivery=on_delivery)
                    break
                except BufferError:
                    poll(0.001)
            poll(0)
    else:
        start = time.monotonic()
        for offset, key, value in records:
            delay = start + offset / 1000.0 - time.monotonic()
            while delay > 0:
                poll(min(delay, 0.005))
                delay = start + offset / 1000.0 - time.monotonic()
            produce(topic, value, key, on_delivery=on_delivery)
            poll(0)
    producer.flush(120)
    end_ms = time.time() * 1000.0
    stats = {
        "records": len(records),
        "acked": acked,
        "errors": errors,
        "t0_ms": t0_ms,
        "last_ack_ms": last_ack_ms,
        "end_ms": end_ms,
        "cpu_s": cpu_s() - cpu0,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    with open(args.out, "w") as f:
        json.dump(stats, f)
    return 0 if acked == len(records) and errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
