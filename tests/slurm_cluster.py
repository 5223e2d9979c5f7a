"""A real one-node SLURM cluster on this machine, for the workflow tests.

Why: the SLURM profile is only proven by jobs that really go through sbatch,
slurmctld and slurmd. Needs root and Debian's slurm-wlm and munge
(``apt-get install slurm-wlm munge``); no systemd, so the daemons are started
here. Partitions ``cpu`` (default) and ``gpu`` share the node, which offers
two fake GPUs (``gpu:fake:2``, backed by /dev/null and /dev/zero) so GPU
rules are scheduled as on a real cluster (jobs see CUDA_VISIBLE_DEVICES).

    python tests/slurm_cluster.py start|stop|status
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

CONF = Path("/etc/slurm/slurm.conf")  # fixed: the plugin's job step drops SLURM_CONF
GRES_CONF = CONF.with_name("gres.conf")
MARKER = "# Written by occbench tests/slurm_cluster.py; safe to delete."
LOG_DIR = Path("/var/log/slurm")
SLURMCTLD_LOG = LOG_DIR / "slurmctld.log"
SLURMD_LOG = LOG_DIR / "slurmd.log"
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_LOG = Path("/var/log/munge/munged.log")
STATE = Path("/run/occbench-slurm.json")  # pids of the daemons started here
HEALTHY = {"idle", "mixed", "allocated", "completing"}


@dataclass
class Cluster:
    slurmctld_log: Path
    reused: bool  # True: it was already up, so whoever started it stops it


def _comm(pid: int) -> str | None:
    """Name of a live process; None for a zombie (nothing may reap it in a container)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    return None if state == "Z" else name


def _wait_pid(name: str, pidfile: Path, deadline: float) -> int:
    """The daemon's pid once it has forked and written its pid file."""
    while time.monotonic() < deadline:
        try:
            if _comm(pid := int(pidfile.read_text())) == name:
                return pid
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise _fail(f"{name} wrote no pid file {pidfile}")


def _pids(name: str) -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _comm(int(p.name)) == name]


def _run(*cmd: str, timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _tail(path: Path, n: int = 20) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()[-n:]
    except OSError as e:
        return f"({e})"
    return "\n".join(lines) or "(empty)"


def _fail(why: str) -> RuntimeError:
    logs = "\n".join(f"--- {p} ---\n{_tail(p)}" for p in (SLURMCTLD_LOG, SLURMD_LOG, MUNGE_LOG))
    return RuntimeError(f"SLURM cluster did not come up: {why}\n{logs}")


def _munge_ok() -> bool:
    cred = _run("munge", "-n")
    return cred.returncode == 0 and subprocess.run(
        ["unmunge"], input=cred.stdout, capture_output=True, text=True, timeout=10
    ).returncode == 0


def _node_state() -> str | None:
    try:
        out = _run("sinfo", "-h", "-N", "-o", "%T", timeout=5)
    except subprocess.TimeoutExpired:
        return None
    states = set(out.stdout.split()) if out.returncode == 0 else set()
    return states.pop() if len(states) == 1 else None


def _read_state() -> dict[str, int | None]:
    try:
        return json.loads(STATE.read_text())
    except (OSError, ValueError):
        return {}


def _write_config() -> bool:
    """Describe this node as `slurmd -C` sees it, so slurmd accepts the config; True if it changed."""
    old = CONF.read_text() if CONF.exists() else None
    if old is not None and MARKER not in old:
        raise RuntimeError(f"{CONF} was not written by {__file__}; not overwriting it")
    host = socket.gethostname().split(".")[0]
    node = _run("slurmd", "-C").stdout.splitlines()[0]  # NodeName=... CPUs=... RealMemory=...
    CONF.parent.mkdir(parents=True, exist_ok=True)
    CONF.write_text(conf := f"""{MARKER}
ClusterName=occbench
SlurmctldHost={host}
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile={SLURMCTLD_LOG}
SlurmdLogFile={SLURMD_LOG}
# No cgroups in containers: track processes by parent pid, bind no CPUs.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default a job that asks for no memory takes the whole node.
DefMemPerCPU=1024
# Keep finished jobs visible to squeue (the plugin's status checks need
# >= 120 s) and to `scontrol show job` (the tests read partition and GPUs).
MinJobAge=3600
ReturnToService=2
# Jobs are not requeued unless they ask (sbatch --requeue), as on many sites:
# the requeue test then proves the profile asks.
JobRequeue=0
MpiDefault=none
MailProg=/bin/true
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
GresTypes=gpu
{node} Gres=gpu:fake:2 State=UNKNOWN
PartitionName=cpu Nodes={host} Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes={host} MaxTime=INFINITE State=UP
""")
    # Two fake GPUs, so both cores of a CI machine can run GPU jobs at once.
    GRES_CONF.write_text(
        f"{MARKER}\nAutoDetect=off\n"
        + "".join(f"NodeName={host} Name=gpu Type=fake File={dev}\n" for dev in ("/dev/null", "/dev/zero"))
    )
    return conf != old


def status() -> Cluster | None:
    """The cluster started here earlier, if all its daemons live and the node is usable."""
    started = _read_state()
    alive = started and all(pid is None or _comm(pid) == name for name, pid in started.items())
    if alive and _munge_ok() and _node_state() in HEALTHY:
        return Cluster(SLURMCTLD_LOG, reused=True)
    return None


def _start_munged() -> int | None:
    if _munge_ok():
        return None  # someone else's munged serves us; leave it alone
    if not MUNGE_KEY.exists():
        subprocess.run(["mungekey", "--create", f"--keyfile={MUNGE_KEY}"], check=True, timeout=60)
    for d in (MUNGE_KEY.parent, Path("/run/munge"), Path("/var/lib/munge"), MUNGE_LOG.parent):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, *_munge_ids())
    os.chown(MUNGE_KEY, *_munge_ids())
    MUNGE_KEY.chmod(0o400)
    pidfile = Path("/run/munge/munged.pid")
    pidfile.unlink(missing_ok=True)
    if _run("runuser", "-u", "munge", "--", "munged").returncode != 0:
        raise _fail("munged failed to start")
    return _wait_pid("munged", pidfile, time.monotonic() + 10)


def _munge_ids() -> tuple[int, int]:
    user = pwd.getpwnam("munge")
    return user.pw_uid, user.pw_gid


def start(timeout: float = 30) -> Cluster:
    """Reuse a healthy cluster started here, else (re)start one and wait until the node is idle."""
    if cluster := status():
        # Started by an older version of this file: apply today's slurm.conf in place
        # (running jobs, perhaps another test session's, keep running).
        if _write_config() and _run("scontrol", "reconfigure").returncode != 0:
            raise _fail("scontrol reconfigure failed")
        return cluster
    stop()
    for name in ("slurmctld", "slurmd"):
        if foreign := _pids(name):
            raise RuntimeError(f"a {name} not started by {__file__} runs (pid {foreign}); stop it first")
    _write_config()
    for d in (LOG_DIR, Path("/var/spool/slurmctld"), Path("/var/spool/slurmd")):
        d.mkdir(parents=True, exist_ok=True)
    started: dict[str, int | None] = {"munged": _start_munged()}
    STATE.write_text(json.dumps(started))
    deadline = time.monotonic() + timeout
    # -c: start from an empty queue, so jobs of an aborted run do not come back.
    for name, cmd in (("slurmctld", ["slurmctld", "-c"]), ("slurmd", ["slurmd"])):
        pidfile = Path(f"/run/{name}.pid")
        pidfile.unlink(missing_ok=True)
        if _run(*cmd).returncode != 0:
            raise _fail(f"{name} exited with an error")
        started[name] = _wait_pid(name, pidfile, deadline)
        STATE.write_text(json.dumps(started))
    while (state := _node_state()) != "idle":
        if dead := [name for name, pid in started.items() if pid and _comm(pid) != name]:
            raise _fail(f"{', '.join(dead)} died")
        if time.monotonic() > deadline:
            raise _fail(f"node state {state!r} after {timeout:.0f} s, wanted 'idle'")
        time.sleep(0.2)
    return Cluster(SLURMCTLD_LOG, reused=False)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it may have exited meanwhile
        os.kill(pid, sig)


def stop(timeout: float = 10) -> None:
    """Stop exactly the daemons that start() recorded, nothing else."""
    started = {pid: name for name, pid in _read_state().items() if pid and _comm(pid) == name}
    for pid in started:
        _kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while (left := [pid for pid, name in started.items() if _comm(pid) == name]) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in left:
        _kill(pid, signal.SIGKILL)
    STATE.unlink(missing_ok=True)


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) == 2 else ""
    if command == "start":
        t0 = time.monotonic()
        cluster = start()
        verb = "reused" if cluster.reused else f"started in {time.monotonic() - t0:.1f} s"
        print(f"SLURM cluster {verb}; slurmctld log: {cluster.slurmctld_log}")
    elif command == "stop":
        stop()
        print("SLURM daemons started by this script are stopped")
    elif command == "status":
        up = status() is not None
        print(_run("sinfo").stdout if up else "no healthy cluster started by this script")
        return 0 if up else 1
    else:
        print(f"usage: {argv[0]} start|stop|status", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
