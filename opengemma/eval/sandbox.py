"""Run untrusted, model-written Python (HumanEval-style tasks) in a separate, limited process.

One file because: every protection, and the runner that applies them, is reviewed together (a sandbox split
over files is easier to weaken unnoticed); tests/eval/test_sandbox.py breaks each one from the outside.

    run_python(code, timeout=10.0, *, memory_mb=1024, max_file_mb=16, max_procs=32,
               stdin=None, allow_network=False) -> SandboxResult    # passed = exit 0 within limits
    check_program(program, timeout=10.0, **limits) -> SandboxResult  # passed = ran to its last line

The code never runs in the harness process: this file re-runs itself as `python -I sandbox.py CONFIG`
(the "runner"), which sets up the protections below, then execs the code in a fresh `__main__`.

Protections when the harness runs as root (our CI and eval machines):
- a private network namespace with only a loopback that is down: no network, localhost included;
- a private mount namespace whose /tmp (bound also onto /var/tmp, /dev/shm, /run/lock) is a fresh
  tmpfs of 4 * max_file_mb that is the working directory and vanishes with the run;
- a fresh uid/gid per run (unlisted, from 0x70000000 up: past systemd's container range), no
  supplementary groups, no_new_privs: the code can write only its tmpfs (and world-writable files),
  RLIMIT_NPROC counts only this run's processes (the kernel ignores it for root), and at the end
  every process of that uid is killed, also those that left the process group with setsid();
- rlimits: RLIMIT_CPU, RLIMIT_AS (memory_mb), RLIMIT_FSIZE (max_file_mb: files and captured output),
  RLIMIT_NPROC (max_procs, threads count too), RLIMIT_CORE 0;
- a wall-clock timeout, then SIGKILL to the whole process group (start_new_session);
- a minimal environment (PATH, HOME=TMPDIR=the working dir, LANG), `python -I`: no PYTHONPATH, no
  user site, no harness directory on sys.path.
The interpreter may live in a directory the new uid cannot enter (pyenv under /root is 0700): the
runner mounts a 0755 tmpfs over the first such directory and binds just sys.prefix and
sys.base_prefix back into it, so the code sees the interpreter and its site-packages, not the rest.
Not isolated even then: the code can read world-readable files (the checkout, /etc) and, with no PID
namespace, see other processes in /proc (not signal them: they have other uids).

Weaker guarantees where namespaces are unavailable or the harness is not root:
- no namespaces (root or not): network is blocked by an audit hook in the runner, which stops
  sockets made by this interpreter only (not a subprocess like `curl`, not ctypes); there is no
  private /tmp (the code can write world-writable places like /tmp), the working directory is a
  fresh directory the harness deletes afterwards; as root with the interpreter in a directory the
  new uid cannot enter, the code keeps CAP_DAC_READ_SEARCH (it can read, not write, any file);
- not root: no uid change, so the code can write wherever the harness user can; network is cut by
  a user+network namespace when the kernel allows unprivileged ones, else by the audit hook;
  RLIMIT_NPROC counts all of the user's processes, so it is set to max_procs above their count now;
  only the process group is killed at the end, so a child that called setsid() can survive.

check_program's evidence: the harness hands the runner a random nonce in the config file, which the
runner reads and deletes before the program starts; only after the program returns without an
exception does the runner write the nonce to a file the harness then reads (as root, a file the
program's uid cannot open). So `os._exit(0)`, `sys.exit(0)` or a killed interpreter before the tests
ran does not pass.
The threat model is accidental and sloppy early exits, not an adversary: code that inspects the
runner's frames (sys._getframe) can find the nonce, and a program that ends with sys.exit(0) after
its tests does not pass either (it did not run to its last line).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import pwd
import resource
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
from dataclasses import dataclass

OUTPUT_LIMIT = 64 * 1024  # bytes kept of stdout and of stderr: the head and the tail halves
_UID_BASE = 0x70000000  # per-run uids are drawn from [base, base + 2**24)
_USE_NAMESPACES = True  # False forces the fallback path (tests use it)
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}

# linux/sched.h, linux/mount.h, linux/prctl.h
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 2, 4, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_DUMPABLE, PR_SET_KEEPCAPS, PR_SET_NO_NEW_PRIVS = 4, 8, 38
CAP_DAC_READ_SEARCH, _LINUX_CAPABILITY_VERSION_3 = 2, 0x20080522


@dataclass
class SandboxResult:
    passed: bool  # status == "ok"
    status: str  # "ok" | "failed" | "timeout" | "killed" (a signal, or a resource limit: memory, CPU)
    returncode: int  # negative: killed by that signal
    stdout: str  # truncated to OUTPUT_LIMIT bytes (head and tail)
    stderr: str
    duration: float  # seconds, wall clock
    note: str = ""  # why, when the status alone does not say


def run_python(
    code: str,
    timeout: float = 10.0,
    *,
    memory_mb: int = 1024,
    max_file_mb: int = 16,
    max_procs: int = 32,
    stdin: str | None = None,
    allow_network: bool = False,
) -> SandboxResult:
    """Run `code` as a script in the sandbox; passed means exit status 0 within the limits."""
    return _run(
        code,
        timeout,
        False,
        memory_mb=memory_mb,
        max_file_mb=max_file_mb,
        max_procs=max_procs,
        stdin=stdin,
        allow_network=allow_network,
    )


def check_program(program: str, timeout: float = 10.0, **limits) -> SandboxResult:
    """Run a test program (prompt + completion + tests + `check(entry_point)`) as run_python does, but
    pass it only if it ran to its last line without an exception: an early exit with status 0 fails."""
    return _run(program, timeout, True, **limits)


def _run(
    code: str,
    timeout: float,
    require_completion: bool,
    *,
    memory_mb: int = 1024,
    max_file_mb: int = 16,
    max_procs: int = 32,
    stdin: str | None = None,
    allow_network: bool = False,
) -> SandboxResult:
    root = tempfile.mkdtemp(prefix="opengemma-sandbox-")  # 0700: config, captured output, evidence
    try:
        uid = _free_uid() if os.geteuid() == 0 else None
        work = os.path.join(root, "work")  # the working directory when there is no private /tmp
        os.mkdir(work)
        if uid is not None:
            os.chown(work, uid, uid)
            os.chmod(root, 0o711)  # the new uid may pass through to work/, not list or read the rest
        nonce = secrets.token_hex(16)
        config = os.path.join(root, "config.json")
        with open(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            json.dump(
                dict(
                    code=code,
                    nonce=nonce,
                    timeout=timeout,
                    memory_mb=memory_mb,
                    max_file_mb=max_file_mb,
                    max_procs=max_procs,
                    allow_network=allow_network,
                    uid=uid,
                    root=root,
                    work=work,
                    namespaces=_USE_NAMESPACES,
                ),
                f,
            )
        with open(os.path.join(root, "stdin"), "w+b") as fin:
            fin.write((stdin or "").encode())
            fin.seek(0)
            with open(os.path.join(root, "stdout"), "wb") as fout, open(os.path.join(root, "stderr"), "wb") as ferr:
                start = time.monotonic()
                proc = subprocess.Popen(
                    [sys.executable, "-I", os.path.abspath(__file__), config],
                    stdin=fin,
                    stdout=fout,
                    stderr=ferr,
                    cwd=work,
                    env=_ENV,
                    start_new_session=True,
                )
                try:
                    timed_out = not _wait_exit(proc.pid, timeout)
                finally:
                    _kill_all(proc, uid)
                duration = time.monotonic() - start
        stdout, stderr = (_read_capped(os.path.join(root, name)) for name in ("stdout", "stderr"))
        try:
            with open(os.path.join(root, "evidence"), "rb") as f:
                evidence = f.read(64).decode("ascii", "replace")
        except FileNotFoundError:  # the runner died before opening it
            evidence = ""
    finally:
        shutil.rmtree(root, ignore_errors=True)

    rc, note = proc.returncode, ""
    if timed_out:
        status, note = "timeout", f"no exit within {timeout:g}s"
    elif rc < 0 or evidence == "MemoryError":
        status = "killed"
        note = "MemoryError (memory_mb limit)" if rc >= 0 else f"signal {-rc}: {signal.strsignal(-rc)}"
    elif rc != 0:
        status = "failed"
    elif require_completion and evidence != nonce:
        status, note = "failed", "exited with status 0 before the program ran to completion"
    else:
        status = "ok"
    return SandboxResult(status == "ok", status, rc, stdout, stderr, duration, note)


def _wait_exit(pid: int, timeout: float) -> bool:
    """Wait for `pid` to exit without reaping it (the pid, and so its process group id, stays ours)."""
    fd = os.pidfd_open(pid)
    try:
        poll = select.poll()  # not select(): fds above 1024 are fine
        poll.register(fd, select.POLLIN)
        return bool(poll.poll(max(timeout, 0) * 1000))
    finally:
        os.close(fd)


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the leader is not reaped yet: this pgid cannot be reused
    except ProcessLookupError:
        pass
    proc.wait()
    if uid is None:
        return
    # Processes that escaped the group (setsid) still carry the run's uid: kill(-1) as that uid reaches
    # all of them at once. A fork bomb cannot outrun it: the kernel refuses forks with SIGKILL pending.
    deadline = time.monotonic() + 10
    while _pids_of(uid) and time.monotonic() < deadline:
        subprocess.run(
            ["/bin/sh", "-c", "kill -9 -1"],
            user=uid,
            group=uid,
            extra_groups=[],
            env={},
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.01)


def _pids_of(uid: int) -> list[int]:
    """Live (not zombie) processes whose real uid is `uid`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:  # exited meanwhile
            continue
        if int(fields["Uid"].split()[0]) == uid and not fields["State"].strip().startswith("Z"):
            pids.append(int(entry))
    return pids


def _free_uid() -> int:
    while True:
        uid = _UID_BASE + secrets.randbelow(1 << 24)
        try:
            pwd.getpwuid(uid)
        except KeyError:
            if not _pids_of(uid):
                return uid


def _read_capped(path: str) -> str:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if size <= OUTPUT_LIMIT:
            return f.read().decode("utf-8", "replace")
        half = OUTPUT_LIMIT // 2
        head = f.read(half)
        f.seek(size - half)
        cut = f"\n... [{size - 2 * half} bytes truncated] ...\n".encode()
        return (head + cut + f.read(half)).decode("utf-8", "replace")


# ---------------------------------------------------------------- the runner (inside the sandbox)

_libc = ctypes.CDLL(None, use_errno=True)


def _sys(name: str, *args) -> None:
    if getattr(_libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    src, dst, fs, opts = (None if s is None else s.encode() for s in (source, target, fstype, data))
    _sys("mount", src, dst, fs, ctypes.c_ulong(flags), opts)


def _hidden_prefixes() -> dict[str, list[str]]:
    """{first directory that "others" cannot enter: the interpreter prefixes below it}."""
    hidden: dict[str, list[str]] = {}
    for path in {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}:
        parts = path.split(os.sep)
        for i in range(2, len(parts) + 1):
            top = os.sep.join(parts[:i])
            if not os.stat(top).st_mode & 0o001:
                hidden.setdefault(top, []).append(path)
                break
    return hidden


def _private_mounts(cfg: dict) -> str:
    """In a fresh mount namespace (root only): show the interpreter to the new uid, give it a private
    tmpfs for /tmp and the other world-writable directories. Returns the new working directory."""
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates back to the host
    for top, paths in _hidden_prefixes().items():
        stage = tempfile.mkdtemp(dir=cfg["root"])
        _mount(top, stage, None, MS_BIND | MS_REC)
        _mount("tmpfs", top, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
        for path in paths:
            os.makedirs(path, exist_ok=True)
            _mount(os.path.join(stage, os.path.relpath(path, top)), path, None, MS_BIND | MS_REC)
        _sys("umount2", stage.encode(), MNT_DETACH)
    # An interpreter that lives below /tmp (a venv there) would vanish under the new tmpfs: hold its
    # directories open and bind them back at the same paths afterwards
    masked = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
    keep = sorted(
        {
            os.path.realpath(d)
            for d in (sys.prefix, sys.base_prefix, os.path.dirname(sys.executable))
            if any(os.path.realpath(d).startswith(m + os.sep) for m in masked)
        }
    )
    held = [(os.open(d, os.O_PATH | os.O_DIRECTORY), d) for d in keep]
    uid, size = cfg["uid"], 4 * cfg["max_file_mb"]
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}m,mode=700,uid={uid},gid={uid}")
    for shared in masked[1:]:
        if os.path.isdir(shared):
            _mount("/tmp", shared, None, MS_BIND)
    for fd, d in held:
        os.makedirs(d, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", d, None, MS_BIND | MS_REC)
        os.close(fd)
    return "/tmp"


def _unshare(flags: int) -> bool:
    try:
        _sys("unshare", flags)
        return True
    except OSError:  # no namespaces here (a container without CAP_SYS_ADMIN, user namespaces disabled)
        return False


def _map_own_ids(uid: int, gid: int) -> None:
    """In a fresh user namespace: be our own uid and gid again (unmapped, we would look like nobody)."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _block_sockets() -> None:
    """Fallback without a network namespace: refuse IP sockets made by this interpreter."""
    import socket

    inet = (socket.AF_INET, socket.AF_INET6)

    def hook(event: str, args: tuple) -> None:
        if (
            event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg")
            and args[0].family in inet
            or event in ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex")
        ):
            raise PermissionError(f"network is disabled in the sandbox ({event})")

    sys.addaudithook(hook)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _keep_only_read_search() -> None:
    """After setresuid under PR_SET_KEEPCAPS: keep just CAP_DAC_READ_SEARCH (read any file, write none)."""
    data = (_CapData * 2)()
    data[0].effective = data[0].permitted = 1 << CAP_DAC_READ_SEARCH
    _sys("capset", ctypes.byref(_CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)), data)


def _set_limit(res: int, soft: int, hard: int | None = None) -> None:
    _, cur = resource.getrlimit(res)
    hard = soft if hard is None else hard
    if cur != resource.RLIM_INFINITY:  # a non-root harness cannot raise its own hard limits
        soft, hard = min(soft, cur), min(hard, cur)
    resource.setrlimit(res, (soft, hard))


def _user_tasks(uid: int) -> int:
    n = 0
    for pid in _pids_of(uid):
        try:
            with open(f"/proc/{pid}/status") as f:
                n += next(int(line.split()[1]) for line in f if line.startswith("Threads:"))
        except (OSError, StopIteration):
            pass
    return n


def _runner(config: str) -> None:
    with open(config) as f:
        cfg = json.load(f)
    os.unlink(config)
    nonce, code, uid = cfg.pop("nonce"), cfg.pop("code"), cfg["uid"]
    # Opened while privileged, not inherited across exec: the program can write to it, never reopen it.
    evidence = os.open(os.path.join(cfg["root"], "evidence"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    # Counted before a user namespace would show other users' processes as ours (the overflow uid).
    nproc = cfg["max_procs"] + (0 if uid is not None else _user_tasks(os.getuid()))
    cwd, netns, mounts = cfg["work"], cfg["allow_network"], False
    if cfg["namespaces"] and uid is not None and _unshare(CLONE_NEWNS | (0 if netns else CLONE_NEWNET)):
        cwd, netns, mounts = _private_mounts(cfg), True, True
    elif cfg["namespaces"] and uid is None and not netns:
        ids = os.getuid(), os.getgid()
        if _unshare(CLONE_NEWUSER | CLONE_NEWNET):  # unprivileged: a user namespace owns the network one
            _map_own_ids(*ids)
            netns = True
    if not netns:
        _block_sockets()

    cpu = math.ceil(cfg["timeout"]) + 1  # a backstop: the harness's wall clock stops the run first
    _set_limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at the soft limit, SIGKILL at the hard one
    _set_limit(resource.RLIMIT_AS, cfg["memory_mb"] << 20)
    _set_limit(resource.RLIMIT_FSIZE, cfg["max_file_mb"] << 20)
    _set_limit(resource.RLIMIT_CORE, 0)
    _set_limit(resource.RLIMIT_NPROC, nproc)
    if uid is not None:
        # Without a mount namespace to show the new uid a hidden interpreter (pyenv in /root), it
        # keeps the right to read anything, or it could not import the standard library.
        read_anything = not mounts and bool(_hidden_prefixes())
        _sys("prctl", PR_SET_KEEPCAPS, int(read_anything), 0, 0, 0)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)  # drops every capability (all but the permitted ones with KEEPCAPS)
        if read_anything:
            _keep_only_read_search()
        _sys("prctl", PR_SET_DUMPABLE, 1, 0, 0, 0)  # the uid change made /proc/self root-owned
    _sys("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)  # setuid binaries (su, sudo) cannot give root back

    os.chdir(cwd)
    os.environ.update(HOME=cwd, TMPDIR=cwd)
    sys.dont_write_bytecode = True
    main = types.ModuleType("__main__")  # a fresh __main__: the program never sees the runner's globals
    sys.modules["__main__"], sys.argv = main, [""]
    import linecache

    linecache.cache["<program>"] = (len(code), None, code.splitlines(True), "<program>")  # source in tracebacks
    try:
        exec(compile(code, "<program>", "exec"), main.__dict__)
    except SystemExit:
        raise
    except BaseException as e:
        if isinstance(e, MemoryError):
            os.write(evidence, b"MemoryError")
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)  # hide the runner's frame
        sys.exit(1)
    sys.stdout.flush()
    os.write(evidence, nonce.encode())


if __name__ == "__main__":
    _runner(sys.argv[1])
