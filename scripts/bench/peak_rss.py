"""Runs a command and prints one JSON line: its wall time and peak RSS (the child's ru_maxrss)."""

import json
import resource
import subprocess
import sys
import time


def main():
    label, command = sys.argv[1], sys.argv[2:]
    started = time.monotonic()
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=sys.stderr, text=True)
    seconds = time.monotonic() - started
    sys.stderr.write(result.stdout)
    if result.returncode != 0:
        sys.exit(f"{label}: {' '.join(command)} exited with {result.returncode}")
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(json.dumps({"label": label, "seconds": round(seconds, 1), "peak_rss_mib": round(peak_kib / 1024, 1),
                      "stdout": result.stdout}))


if __name__ == "__main__":
    main()
