"""Foundation budgets: time from `make run` to the first answered request (< 2 s),
and idle memory of the console after sign-in (< 90 MiB RSS).

Runs the real server command (`flask --app app cds serve`, what `make run` runs)
on a fresh instance folder, times the first answered request, signs in, opens
the Users tab, lets the process settle and reads its RSS from /proc.

    .venv/bin/python bench/startup_memory.py
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLASK = str(Path(sys.executable).parent / "flask")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def run_once(instance: str) -> tuple[float, float, str]:
    port = free_port()
    env = dict(os.environ, CDS_INSTANCE_PATH=instance, CDS_PORT=str(port))
    t0 = time.perf_counter()
    proc = subprocess.Popen([FLASK, "--app", "app", "cds", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            with urllib.request.urlopen(url + "/login", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            if time.perf_counter() - t0 > 30:
                proc.kill()
                raise SystemExit("server did not answer within 30 s")
            time.sleep(0.02)
    startup = time.perf_counter() - t0
    return startup, port, proc


def main() -> None:
    # As `make run` does before it starts the server.
    subprocess.run([sys.executable, "-m", "compileall", "-q", "app.py", "cds", "migrations"], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        # First start on an empty instance (keys, migrations, first admin), then a normal start.
        for label in ("first start (empty instance)", "later start"):
            startup, port, proc = run_once(tmp)
            out_lines = []
            if label.startswith("first"):
                # Read the printed admin password to sign in.
                deadline = time.time() + 10
                password = None
                while time.time() < deadline and password is None:
                    line = proc.stdout.readline()
                    out_lines.append(line)
                    m = re.search(r"password:\s+(\S+)", line)
                    if m:
                        password = m.group(1)
                jar = CookieJar()
                opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
                page = opener.open(f"http://127.0.0.1:{port}/login").read().decode()
                token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
                data = urllib.parse.urlencode({"username": "admin", "password": password,
                                               "csrf_token": token}).encode()
                opener.open(f"http://127.0.0.1:{port}/login", data=data).read()
                users = opener.open(f"http://127.0.0.1:{port}/users").read().decode()
                assert "Sign out" in users, "sign-in failed"
                time.sleep(5)
                rss = rss_mib(proc.pid)
                results.append((label, startup, rss))
            else:
                results.append((label, startup, None))
            proc.terminate()
            proc.wait(10)
    print("Startup and idle memory (flask --app app cds serve, waitress)")
    for label, startup, rss in results:
        extra = f", idle RSS after sign-in {rss:.1f} MiB" if rss else ""
        print(f"  {label}: first answered request after {startup:.2f} s{extra}")


if __name__ == "__main__":
    import urllib.parse  # noqa: F401
    main()
