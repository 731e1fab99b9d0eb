"""`weir serve` ingest against `weir run` on the same rows, by concurrency.

Builds ROWS flight rows (the committed sample, repeated), then for the
flights pipeline with its month-partitioned sink and without partitioning:
times `weir run` on them as one CSV file (best of 3), and `weir serve`
taking them as 2000-row CSV requests from N concurrent keep-alive clients
(N = 4, 16, 32; each client waits for its answer, which comes once its
micro-batch is committed). The service keeps its defaults but `linger_ms =
20`; micro-batches are cut early once quiet (`quiet_ms`, docs/serve.md).
Prints one JSON object with records/s, the serve / run ratios, the
micro-batches each phase made and the server's CPU time. The clients are
Python threads; they use a fraction of a core.

Back-to-back runs on ext4 without a journal (this project's machines) slow
each other: creating files right after many were deleted (the previous
run's work directory) scans past the freed inodes: the allocator skips
inodes freed in the last 60-300 s (`recently_deleted`, `find_inode_bit`
in `perf`). Partitioned runs, 12 files a micro-batch, then take 0.7 s or
1.2 s of server CPU for the same work, so a 15 s gap is not enough.
Alternate the binaries you compare, several runs each, and compare their
records/s and server CPU medians.

Usage: python3 bench/serve_ingest.py WEIR_BINARY [ROWS]   (ROWS default 219600)
"""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

weir = os.path.abspath(sys.argv[1])
rows_wanted = int(sys.argv[2]) if len(sys.argv) > 2 else 219_600
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
work = tempfile.mkdtemp(prefix="weir-serve-ingest-")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


lines = open(os.path.join(repo, "tests/data/flights_sample.csv")).read().strip().split("\n")
header, sample = lines[0], lines[1:]
rows = (sample * (rows_wanted // len(sample) + 1))[:rows_wanted]
bodies = [
    (header + "\n" + "\n".join(rows[i : i + 2000]) + "\n").encode()
    for i in range(0, len(rows), 2000)
]
os.makedirs(os.path.join(work, "data"))
shutil.copy(os.path.join(repo, "tests/data/airlines.csv"), os.path.join(work, "data/airlines.csv"))
with open(os.path.join(work, "data/flights.csv"), "w") as f:
    f.write(header + "\n" + "\n".join(rows) + "\n")
example = open(os.path.join(repo, "examples/flights/pipeline.toml")).read()


def pipeline(name, partitioned):
    text = example if partitioned else example.replace('partition_by = ["month"]', "")
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post_all(port, clients):
    def worker(chunk):
        connection = http.client.HTTPConnection("127.0.0.1", port)
        for body in chunk:
            connection.request(
                "POST", "/v1/pipelines/flights/records", body=body, headers={"content-type": "text/csv"}
            )
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 200, answer.status

    threads = [threading.Thread(target=worker, args=(bodies[i::clients],)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def status(port):
    connection = http.client.HTTPConnection("127.0.0.1", port)
    connection.request("GET", "/v1/pipelines/flights")
    answer = connection.getresponse()
    assert answer.status == 200, answer.status
    return json.loads(answer.read())


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


result = {"rows": len(rows), "request_rows": 2000}
for partitioned in (True, False):
    kind = "partitioned" if partitioned else "unpartitioned"
    run_file = pipeline(f"run-{kind}.toml", partitioned)
    best = None
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([weir, "--log", "off", "run", "--no-progress", run_file], check=True, stdout=subprocess.DEVNULL)
        elapsed = time.perf_counter() - start
        best = elapsed if best is None else min(best, elapsed)
    entry = {"run_records_per_s": round(len(rows) / best)}
    pipeline("pipeline.toml", partitioned)
    port = free_port()
    state = os.path.join(work, f"state-{kind}")
    service = os.path.join(work, f"service-{kind}.toml")
    with open(service, "w") as f:
        f.write(
            f'[service]\nlisten = "127.0.0.1:{port}"\nstate_dir = "{state}"\n\n'
            f'[[pipelines]]\nfile = "pipeline.toml"\nlinger_ms = 20\n'
            f'sink_path = "serve-{kind}/flights"\nquarantine_path = "serve-{kind}/quarantine"\n'
        )
    server = subprocess.Popen([weir, "--log", "off", "serve", service], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        post_all(port, 4)  # warm-up: compiled plugins, page cache
        batches_before = status(port)["batches"]
        for clients in (4, 16, 32):
            cpu_before = cpu_seconds(server.pid)
            elapsed = post_all(port, clients)
            rate = len(rows) / elapsed
            entry[f"serve_{clients}_clients_records_per_s"] = round(rate)
            entry[f"serve_{clients}_clients_over_run"] = round(rate / entry["run_records_per_s"], 2)
            entry[f"serve_{clients}_clients_server_cpu_s"] = round(cpu_seconds(server.pid) - cpu_before, 2)
            entry[f"serve_{clients}_clients_wall_s"] = round(elapsed, 2)
            batches = status(port)["batches"]
            entry[f"serve_{clients}_clients_micro_batches"] = batches - batches_before
            batches_before = batches
            log(kind, clients, "clients:", round(rate), "records/s")
    finally:
        server.terminate()
        server.wait()
    result[kind] = entry

shutil.rmtree(work, ignore_errors=True)
json.dump(result, sys.stdout, indent=2)
print()
