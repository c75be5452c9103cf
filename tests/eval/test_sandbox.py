"""The code-execution sandbox: each test runs the attack a protection exists for and checks its effect
from the outside, so removing a protection makes its test fail (none of them skip)."""

import glob
import os
import secrets
import socket
import time

from opengemma.eval import sandbox
from opengemma.eval.sandbox import OUTPUT_LIMIT, check_program, run_python

SET_NAME = "import ctypes\nctypes.CDLL(None).prctl(15, {marker!r}.encode(), 0, 0, 0)  # PR_SET_NAME: a findable comm\n"


def _marker() -> str:
    return "sbx" + secrets.token_hex(5)  # comm holds 15 characters


def _alive(marker: str) -> list[int]:
    """Live (not zombie) processes with `marker` in their comm or command line."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/comm", "rb") as f:
                comm = f.read()
        except OSError:
            continue
        if state != b"Z" and (marker.encode() in comm or marker.encode() in cmdline):
            pids.append(int(entry))
    return pids


def _gone(marker: str, within: float = 1.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_ok_program_output_and_stdin_captured():
    r = run_python("import sys\nprint('hello', sys.stdin.read())\nprint('oops', file=sys.stderr)", 5, stdin="world")
    assert (r.passed, r.status, r.returncode) == (True, "ok", 0)
    assert r.stdout == "hello world\n" and r.stderr == "oops\n"


def test_failing_assert_fails():
    r = run_python("assert 1 + 1 == 3, 'bad sum'", 5)
    assert (r.passed, r.status, r.returncode) == (False, "failed", 1)
    assert "AssertionError: bad sum" in r.stderr and 'File "<program>", line 1' in r.stderr


def test_signal_is_killed():
    r = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", 5)
    assert (r.passed, r.status, r.returncode) == (False, "killed", -9)
    assert run_python("import os\nos.kill(os.getpid(), 40)", 5).status == "killed"  # a real-time signal


def test_bad_input_does_not_break_the_harness():
    for code in ["def f(:\n", "x = 1\x00", "x = '\ud800'\nprint(x)", "import sys\nsys.exit('custom message')"]:
        r = run_python(code, 5)
        assert not r.passed and r.status == "failed", code
    assert run_python("print(1)", 5).passed


def test_infinite_loop_times_out():
    before = set(glob.glob(os.path.join(sandbox.tempfile.gettempdir(), "opengemma-sandbox-*")))
    start = time.monotonic()
    r = run_python("while True:\n    pass", timeout=1)
    assert (r.passed, r.status) == (False, "timeout")
    assert 1 <= r.duration < 3 and time.monotonic() - start < 4
    assert set(glob.glob(os.path.join(sandbox.tempfile.gettempdir(), "opengemma-sandbox-*"))) <= before  # cleaned up
    assert run_python("print('still here')", 5).stdout == "still here\n"  # the harness carries on


def test_limits_and_identity_inside():
    code = (
        "import os, resource, sys\n"
        "print('isolated', sys.flags.isolated)\n"
        "for name in ('CPU', 'AS', 'FSIZE', 'NPROC', 'CORE'):\n"
        "    print(name, *resource.getrlimit(getattr(resource, 'RLIMIT_' + name)))\n"
        "status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "print('uid', os.getuid(), os.geteuid(), 'groups', os.getgroups())\n"
        "print('caps', int(status['CapEff'], 16), 'nnp', status['NoNewPrivs'].strip())\n"
        "print('env', sorted(os.environ))\n"
    )
    r = run_python(code, timeout=2, memory_mb=512, max_file_mb=3, max_procs=9)
    assert r.passed, r.stderr
    lines = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert lines["CPU"] == "3 4" and lines["AS"] == f"{512 << 20} {512 << 20}"
    assert lines["FSIZE"] == f"{3 << 20} {3 << 20}" and lines["CORE"] == "0 0"
    assert lines["NPROC"] == "9 9"  # exact: the run has a uid of its own
    uid = int(lines["uid"].split()[0])
    assert uid != 0 and lines["uid"] == f"{uid} {uid} groups []"
    assert lines["caps"] == "0 nnp 1" and lines["isolated"] == "1"
    assert lines["env"] == "['HOME', 'LANG', 'PATH', 'PYTHONDONTWRITEBYTECODE', 'TMPDIR']"


def test_nproc_limit_holds():
    marker = _marker()
    code = SET_NAME.format(marker=marker) + (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(40):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print(n)\n"
    )
    r = run_python(code, timeout=5, max_procs=8)
    assert r.passed, r.stderr
    assert int(r.stdout) < 8  # the runner itself is one of the 8
    assert _gone(marker)


def test_fork_bomb_is_contained_and_cleaned_up():
    marker = _marker()
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    code = SET_NAME.format(marker=marker) + bomb
    start = time.monotonic()
    r = run_python(code, timeout=1.5, max_procs=16)
    assert not r.passed and r.status == "timeout"
    assert time.monotonic() - start < 5
    assert _gone(marker, within=0.5)


def test_background_child_is_killed():
    marker = f"1000.{secrets.randbelow(10**9):09d}"  # sleep takes fractional seconds: a unique argv
    r = run_python(f"import subprocess\nsubprocess.Popen(['sleep', '{marker}'])\nprint('started')", 5)
    assert r.passed and r.stdout == "started\n"
    assert _gone(marker)


def test_setsid_child_is_killed():
    marker = _marker()
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()  # leaves the process group that the harness kills\n"
        + "".join("    " + line + "\n" for line in SET_NAME.format(marker=marker).splitlines())
        + "    time.sleep(1000)\n"
        "time.sleep(0.3)\n"
    )
    r = run_python(code, 5)
    assert r.passed, r.stderr
    assert _gone(marker)


def test_memory_hog_is_stopped():
    code = "chunks = []\nfor _ in range(64):\n    chunks.append(bytearray(64 << 20))\nprint('allocated 4 GiB')"
    r = run_python(code, timeout=10, memory_mb=256)
    assert not r.passed and r.status == "killed", r
    assert "allocated" not in r.stdout


def test_file_size_limit_and_huge_output():
    r = run_python("open('big', 'wb').write(bytes(2 << 20))", 5, max_file_mb=1)
    assert r.status == "failed" and "File too large" in r.stderr
    r = run_python("line = 'x' * 1023\nfor _ in range(40 * 1024):\n    print(line)", 10, max_file_mb=4)
    assert not r.passed
    assert len(r.stdout) < OUTPUT_LIMIT + 100 and "bytes truncated" in r.stdout


WRITES = (
    "import os\n"
    "for path in {targets!r}:\n"
    "    try:\n"
    "        with open(path, 'w') as f:\n"
    "            f.write('escaped')\n"
    "    except OSError as e:\n"
    "        print('blocked', path, type(e).__name__)\n"
    "with open('inside.txt', 'w') as f:  # the working directory is writable\n"
    "    f.write('ok')\n"
    "assert open(os.path.join(os.environ['TMPDIR'], 'inside.txt')).read() == 'ok'\n"
)


def _outside_targets(tmp_path) -> list[str]:
    tag = secrets.token_hex(6)
    return [str(tmp_path / "escaped.txt"), f"/etc/opengemma-escape-{tag}", f"/tmp/opengemma-escape-{tag}"]


def _assert_not_written(r, targets):
    try:
        assert r.passed, r.stderr
        assert not [t for t in targets if os.path.exists(t)]
    finally:
        for t in targets:
            if os.path.exists(t):
                os.remove(t)


def test_writes_outside_the_sandbox_fail(tmp_path):
    targets = _outside_targets(tmp_path)
    _assert_not_written(run_python(WRITES.format(targets=targets), 5), targets)


def _server():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.setblocking(False)
    return srv, srv.getsockname()[1]


def _connected(srv) -> bool:
    try:
        srv.accept()[0].close()
        return True
    except BlockingIOError:
        return False


NET = (
    "import socket, subprocess, sys\n"
    "def blocked(addr):\n"
    "    try:\n"
    "        socket.create_connection(addr, timeout=2).close()\n"
    "    except OSError:\n"
    "        return True\n"
    "    return False\n"
    "assert blocked(('127.0.0.1', {port})), 'reached the harness on localhost'\n"
    "assert blocked(('1.1.1.1', 53)), 'reached 1.1.1.1:53'\n"
)
# A new interpreter inside the sandbox: an audit hook in the runner does not reach it, a namespace does.
NET_CHILD = (
    "probe = 'import socket; socket.create_connection((\"127.0.0.1\", {port}))'\n"
    "child = subprocess.run([sys.executable, '-c', probe])\n"
    "assert child.returncode != 0, 'a child process reached the harness on localhost'\n"
)


def test_network_is_blocked():
    srv, port = _server()
    with srv:
        r = run_python((NET + NET_CHILD).format(port=port), 10)
        assert r.passed, r.stderr
        assert not _connected(srv)
        # the same probe with the network allowed does connect: the test above can tell
        r = run_python(
            f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()", 5, allow_network=True
        )
        assert r.passed, r.stderr
        time.sleep(0.1)
        assert _connected(srv)


def test_fallback_without_namespaces(monkeypatch, tmp_path):
    """No namespaces (a locked-down container): the audit hook blocks sockets and, as root, the uid change
    still blocks writes outside (the private /tmp is gone: only root-owned places are checked)."""
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)
    srv, port = _server()
    with srv:
        r = run_python(NET.format(port=port), 10)
        assert r.passed, r.stderr
        assert not _connected(srv)
    targets = _outside_targets(tmp_path)[:2]
    _assert_not_written(run_python(WRITES.format(targets=targets), 5), targets)


SOLUTION = "def add(a, b):\n    return a + b\n"
WRONG = "def add(a, b):\n    return 0\n"
TESTS = "\n\ndef check(candidate):\n    assert candidate(1, 2) == 3\n\ncheck(add)\n"


def test_check_program_needs_the_program_to_finish():
    assert check_program(SOLUTION + TESTS, 5).passed
    assert check_program(WRONG + TESTS, 5).status == "failed"
    for exit_early in ["import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n", "raise SystemExit\n"]:
        cheat = exit_early + WRONG + TESTS
        assert run_python(cheat, 5).passed  # exit status 0 alone...
        r = check_program(cheat, 5)
        assert (r.passed, r.status, r.returncode) == (False, "failed", 0), exit_early  # ...is not evidence
        assert "before the program ran to completion" in r.note
    # an exit from inside the tested function, mid-test
    r = check_program("import os\ndef add(a, b):\n    os._exit(0)\n" + TESTS, 5)
    assert not r.passed
