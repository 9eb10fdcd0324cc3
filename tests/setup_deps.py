"""Install what the test suite needs beyond Python packages (run by `make test`).

Debian packages are installed only when missing, so a second run costs nothing. As the machine
has no network beyond the package registries, this is the one place that reaches them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# executable -> Debian package providing it
DEBIAN: dict[str, str] = {
    "chromium": "chromium",  # the dashboard's browser test (driven by playwright, headless)
    "strace": "strace",  # the durable-acknowledgement test traces the syscalls of an upload
    "etcd": "etcd-server",  # the etcd control plane's tests: a three-member cluster (3.4)
}


def main() -> int:
    missing = sorted({pkg for exe, pkg in DEBIAN.items() if shutil.which(exe) is None})
    if not missing:
        return 0
    if os.geteuid() != 0:
        print(f"tests need Debian packages {missing}; run as root or install them", file=sys.stderr)
        return 1
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
