"""Times whole processes side by side, for the benchmarks in this folder.

Each engine's command runs once per round, engines interleaved within a
round so that machine noise falls on all of them alike; the first round
only warms the page cache and is not counted.
"""

import statistics
import subprocess
import time


def median_seconds(commands, repetitions, before=None):
    """Median wall-clock seconds of each command over `repetitions` rounds.

    `commands` maps an engine's name to its argv; `before(name)`, when
    given, runs untimed before each of that engine's runs (for example to
    reset state a run would otherwise reuse). Output is discarded; a
    failing command raises `subprocess.CalledProcessError`.
    """
    times = {name: [] for name in commands}
    for _ in range(repetitions + 1):
        for name, command in commands.items():
            if before is not None:
                before(name)
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t[1:]) for name, t in times.items()}
