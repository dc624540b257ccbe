"""A chatty writer: 50 MB of lines straight into a file vs through nbscale's log pump.

    python benchmarks/bench_logpump.py [--rounds 5] [--mb 50]

Each round starts a fresh Python process that writes the lines; the pumped
contender's time runs until the pump has written the last byte (its log file
holds everything), so the pump's own start and drain are included.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from harness import compare, save, summary, time_command

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from nbscale.logpump import wait_for_log_pumps  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mb", type=int, default=50)
    args = parser.parse_args()
    lines = args.mb * 10_000  # 100-byte lines
    folder = Path(tempfile.mkdtemp(prefix="bench-logpump-"))
    writer = (
        "import sys\nw = sys.stdout.write\n"
        f"for i in range({lines}):\n    w('%099d\\n' % i)\nsys.stdout.flush()\n"
    )
    direct_log, pumped_log = folder / "direct.log", folder / "pumped" / "rank-0.log"
    env = {**os.environ, "NBSCALE_LOG_MAX_BYTES": str(4 * args.mb << 20)}

    def direct() -> float:
        direct_log.unlink(missing_ok=True)
        script = f"import os\nfd = os.open({str(direct_log)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND)\n"
        script += "os.dup2(fd, 1)\n" + writer
        return time_command([sys.executable, "-c", script], env=env)

    def pumped() -> float:
        pumped_log.unlink(missing_ok=True)
        script = f"from nbscale.logpump import redirect\nredirect({str(pumped_log)!r})\n" + writer
        start = time.perf_counter()
        time_command([sys.executable, "-c", script], env=env)
        wait_for_log_pumps(pumped_log.parent, timeout=120)
        elapsed = time.perf_counter() - start
        if pumped_log.stat().st_size != lines * 100:
            raise RuntimeError("the pumped log is incomplete")
        return elapsed

    samples = compare({"file": direct, "pump": pumped}, rounds=args.rounds)
    result = summary(samples, baseline="file")
    result["megabytes"] = args.mb
    result["goal"] = "pump/file median ratio <= 1.10"
    save("logpump", result)
    print(result["medians_s"], result["ratio_vs_file"])


if __name__ == "__main__":
    main()
