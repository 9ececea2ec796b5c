"""What machine and tree a benchmark ran on, for its report.

Shared by bench/media/run.py and bench/queue/run.py so both describe the
host the same way: each adds the versions of the tools it compares.
"""

import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def capture(argv, line=0, cwd=None):
    """Line `line` of a command's output, "not found" if it cannot run."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[line].strip() if len(lines) > line else "unknown"


def _first_field(path, prefix, parse):
    try:
        for text in Path(path).read_text().splitlines():
            if text.startswith(prefix):
                return parse(text)
    except (OSError, ValueError, IndexError):
        pass
    return "unknown"


def host():
    """nproc, CPU, memory and OS, in report order."""
    return {
        "nproc": capture(["nproc"]),
        "CPU": _first_field("/proc/cpuinfo", "model name", lambda t: t.split(":", 1)[1].strip()),
        "memory": _first_field("/proc/meminfo", "MemTotal",
                               lambda t: f"{int(t.split()[1]) / 1024 / 1024:.1f} GiB"),
        "OS": f"{_first_field('/etc/os-release', 'PRETTY_NAME=', _quoted_value)}, "
              f"kernel {platform.release()}",
    }


def _quoted_value(assignment):
    return assignment.split("=", 1)[1].strip('"')


def revision():
    """The tree's short commit, noting uncommitted changes to tracked files."""
    dirty = capture(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"])
    commit = capture(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    return f"git {commit}{' + uncommitted changes' if dirty not in ('unknown', '') else ''}"
