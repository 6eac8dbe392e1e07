"""A private, throw-away Slurm cluster on this one machine, for tests and manual checks.

Everything lives in one folder: configuration, logs, state, a MariaDB data directory
and fake GPU device files. Every daemon (MariaDB, MUNGE, slurmdbd, slurmctld and two
slurmd) runs in the foreground as a child process of the object that started it, on
TCP ports checked free at start, so a stale cluster from another run cannot clash and
`stop()` only ever signals processes it started.

Needs root (SlurmUser=root, munged is switched to the `munge` user) and the Debian
packages that scripts/install-system-deps.sh installs.

Manual use:  python -m tests.slurm_cluster up /tmp/mycluster
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

INSTALL_HINT = "run scripts/install-system-deps.sh as root to install Slurm, MUNGE and MariaDB"
NODE_FEATURE = "planjob"  # every test node has it

# Daemons plus every client command the cluster itself calls.
REQUIRED_BINARIES: tuple[str, ...] = (
    "slurmctld",
    "slurmd",
    "slurmdbd",
    "munged",
    "mariadbd",
    "mariadb-install-db",
    "sinfo",
    "squeue",
    "scancel",
    "sacctmgr",
)

# Daemons live in sbin, which a non-login PATH may lack.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")

# Below the kernel's ephemeral range (usually 32768+), so outgoing connections made
# between our free-port check and the daemon's bind() cannot steal the port.
_PORT_RANGE = (20000, 32000)
# slurmctld, slurmdbd, mariadb, slurmd n1, slurmd n2: one consecutive block, because
# the two slurmd ports are given to Slurm as a range.
_PORT_BLOCK = 5

_PR_SET_PDEATHSIG = 1
# Loaded up front: calling dlopen() in a forked child of a threaded parent can deadlock.
_LIBC = ctypes.CDLL(None, use_errno=True)

_LOG_TAIL_LINES = 25


class SlurmClusterError(RuntimeError):
    """The cluster could not be started (the message carries the daemon log tails)."""


def find_binary(name: str) -> str | None:
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *_EXTRA_BIN_DIRS])
    return shutil.which(name, path=search_path)


def missing_binaries() -> list[str]:
    return [name for name in REQUIRED_BINARIES if find_binary(name) is None]


def _require_binary(name: str) -> str:
    path = find_binary(name)
    if path is None:
        raise SlurmClusterError(f"{name} not found; {INSTALL_HINT}")
    return path


def _die_with_parent() -> None:
    # Runs in the child before exec (after any uid switch, which would clear it): if the
    # test process dies without calling stop(), the kernel stops the daemon for us.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _make_fake_device(path: Path) -> None:
    # A character device (a twin of /dev/null) keeps slurmd from logging "not a valid
    # character or block device" at every start; a plain file also works, where mknod is
    # not allowed (containers without CAP_MKNOD).
    if path.exists():
        return
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError:
        path.touch()


def _port_is_free(port: int) -> bool:
    # Slurm daemons bind the wildcard address, so that is the one to test.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _find_free_port_block(size: int, attempts: int = 500) -> int:
    low, high = _PORT_RANGE
    rng = random.Random()
    for _ in range(attempts):
        base = rng.randrange(low, high - size)
        if all(_port_is_free(base + offset) for offset in range(size)):
            return base
    raise SlurmClusterError(f"no block of {size} free TCP ports in {low}-{high}")


def _port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<cannot read: {error}>"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class Ports:
    slurmctld: int
    slurmdbd: int
    mariadb: int
    slurmd_first: int

    @classmethod
    def pick(cls) -> Ports:
        base = _find_free_port_block(_PORT_BLOCK)
        return cls(slurmctld=base, slurmdbd=base + 1, mariadb=base + 2, slurmd_first=base + 3)


@dataclass
class _Daemon:
    name: str
    process: subprocess.Popen[bytes]
    # Everything the process wrote to stdout/stderr, including fatal errors from before
    # it opened its log file.
    console_path: Path


class SlurmCluster:
    """Two fake-GPU nodes (n1, n2) in one partition `gpu`, with accounting.

    Use as a context manager, or call start() and stop(). After start(), merge `env`
    into the environment of any Slurm client (sbatch, srun, submitit, ...).
    """

    partition = "gpu"
    max_time_minutes = 3
    gpus_per_node = 2
    cpus_per_node = 2
    # Fake on purpose (config_overrides): the same on every machine, whatever it has.
    real_memory_mb = 4000
    def_mem_per_cpu_mb = 1000

    def __init__(
        self,
        folder: Path | str,
        cluster_name: str = "plantest",
        start_timeout_s: float = 90.0,
    ) -> None:
        self.folder = Path(folder).resolve()
        self.cluster_name = cluster_name
        self.start_timeout_s = start_timeout_s
        self.nodes: list[str] = ["n1", "n2"]
        self.hostname = socket.gethostname()
        self.ports: Ports | None = None
        self._daemons: list[_Daemon] = []
        self._runtime_dir: Path | None = None
        self._db_password = secrets.token_hex(12)
        self._deadline = 0.0

    # ----- paths -------------------------------------------------------------------

    @property
    def conf_dir(self) -> Path:
        return self.folder / "etc"

    @property
    def conf_path(self) -> Path:
        return self.conf_dir / "slurm.conf"

    @property
    def slurmdbd_conf_path(self) -> Path:
        # slurmdbd only looks next to slurm.conf.
        return self.conf_dir / "slurmdbd.conf"

    @property
    def gres_conf_path(self) -> Path:
        return self.conf_dir / "gres.conf"

    @property
    def log_dir(self) -> Path:
        return self.folder / "log"

    @property
    def mariadb_log(self) -> Path:
        return self.log_dir / "mariadb.log"

    @property
    def munged_log(self) -> Path:
        return self.log_dir / "munged.log"

    @property
    def slurmdbd_log(self) -> Path:
        return self.log_dir / "slurmdbd.log"

    @property
    def slurmctld_log(self) -> Path:
        return self.log_dir / "slurmctld.log"

    @property
    def slurmd_logs(self) -> dict[str, Path]:
        return {node: self.log_dir / f"slurmd-{node}.log" for node in self.nodes}

    @property
    def logs(self) -> dict[str, Path]:
        named = {
            "mariadb": self.mariadb_log,
            "munged": self.munged_log,
            "slurmdbd": self.slurmdbd_log,
            "slurmctld": self.slurmctld_log,
        }
        named.update({f"slurmd-{node}": path for node, path in self.slurmd_logs.items()})
        return named

    @property
    def _install_log(self) -> Path:
        return self.log_dir / "mariadb-install-db.log"

    @property
    def fake_gpu_dir(self) -> Path:
        return self.folder / "fakegpu"

    @property
    def munge_socket(self) -> Path:
        return self._runtime().joinpath("munge", "munge.socket")

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf_path)}

    @property
    def running(self) -> bool:
        return bool(self._daemons)

    def _runtime(self) -> Path:
        if self._runtime_dir is None:
            raise SlurmClusterError("cluster not started")
        return self._runtime_dir

    def _node_range(self) -> str:
        return f"n[1-{len(self.nodes)}]"

    # ----- lifecycle -----------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        if self.running:
            raise SlurmClusterError("cluster already started")
        if os.geteuid() != 0:
            raise SlurmClusterError("the test cluster needs root (SlurmUser=root, munged)")
        missing = missing_binaries()
        if missing:
            raise SlurmClusterError(f"missing {', '.join(missing)}; {INSTALL_HINT}")
        self._deadline = time.monotonic() + self.start_timeout_s
        try:
            self._prepare_files()
            self._start_mariadb()
            self._start_munged()
            self._start_slurmdbd()
            self._register_cluster()
            self._start_slurmctld()
            self._start_slurmds()
            self._wait_nodes_idle()
        except BaseException:
            # Also on KeyboardInterrupt: never leave half a cluster running.
            self.stop()
            raise

    def stop(self) -> None:
        try:
            if self._daemon_alive("slurmctld"):
                self._cancel_all_jobs()
        finally:
            for daemon in reversed(self._daemons):
                _terminate(daemon.process)
            self._daemons.clear()
            if self._runtime_dir is not None:
                _kill_leftover_job_processes(self.conf_path)
                shutil.rmtree(self._runtime_dir, ignore_errors=True)
                self._runtime_dir = None

    # ----- files -------------------------------------------------------------------

    def _prepare_files(self) -> None:
        self.ports = Ports.pick()
        spool = self.folder / "spool"
        # slurmd checks its spool folder (a socket folder) before it would create it.
        spool_dirs = [spool / f"slurmd-{node}" for node in self.nodes]
        for folder in (self.conf_dir, self.log_dir, self.folder / "run", *spool_dirs):
            folder.mkdir(parents=True, exist_ok=True)
        self._make_runtime_dir()
        self._make_fake_gpus()
        self.conf_path.write_text(self._slurm_conf())
        self.gres_conf_path.write_text(self._gres_conf())
        self._write_private(self.slurmdbd_conf_path, self._slurmdbd_conf())

    def _make_runtime_dir(self) -> None:
        # Sockets go to a short path of their own: a Unix socket path is limited to 107
        # bytes, and munged (which refuses to run as root) could not reach a socket
        # inside pytest's root-only /tmp/pytest-of-root tree.
        runtime = Path(tempfile.mkdtemp(prefix="slurmtest-"))
        runtime.chmod(0o755)
        self._runtime_dir = runtime
        munge_dir = runtime / "munge"
        munge_dir.mkdir(mode=0o755)
        munge = pwd.getpwnam("munge")
        os.chown(munge_dir, munge.pw_uid, munge.pw_gid)
        # A key of our own: the cluster must not depend on, or talk to, a system munged.
        key = munge_dir / "munge.key"
        key.write_bytes(secrets.token_bytes(128))
        key.chmod(0o600)
        os.chown(key, munge.pw_uid, munge.pw_gid)

    def _make_fake_gpus(self) -> None:
        # Slurm drops GPUs whose File= does not exist ("Removing file-less GPU").
        for node in self.nodes:
            node_dir = self.fake_gpu_dir / node
            node_dir.mkdir(parents=True, exist_ok=True)
            for index in range(self.gpus_per_node):
                _make_fake_device(node_dir / f"gpu{index}")

    @staticmethod
    def _write_private(path: Path, text: str) -> None:
        # slurmdbd refuses a slurmdbd.conf readable by others (it holds the DB password).
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        path.chmod(0o600)

    def _slurm_conf(self) -> str:
        ports = self._ports()
        folder = self.folder
        last_slurmd_port = ports.slurmd_first + len(self.nodes) - 1
        lines = [
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={self.hostname}(127.0.0.1)",
            f"SlurmctldPort={ports.slurmctld}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={folder}/spool/slurmctld",
            f"SlurmdSpoolDir={folder}/spool/slurmd-%n",
            f"SlurmctldPidFile={folder}/run/slurmctld.pid",
            f"SlurmdPidFile={folder}/run/slurmd-%n.pid",
            f"SlurmctldLogFile={self.slurmctld_log}",
            f"SlurmdLogFile={self.log_dir}/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No cgroups: works in containers and VMs without a delegated cgroup tree.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "MpiDefault=none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            f"DefMemPerCPU={self.def_mem_per_cpu_mb}",
            "SchedulerType=sched/backfill",
            # Tests wait on the scheduler: run it every second, not every 30/60 s.
            "SchedulerParameters=bf_interval=1,sched_interval=1,sched_min_interval=100000",
            # Nodes are fake (memory, GPUs): trust slurm.conf, never drain for mismatch.
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "InactiveLimit=0",
            "KillWait=5",
            # Finished jobs stay visible to scontrol/squeue for 10 minutes.
            "MinJobAge=600",
            "SlurmdTimeout=60",
            "MessageTimeout=10",
            "MailProg=/bin/true",
            # The submitter's ulimits (often raised in CI) need not be allowed here.
            "PropagateResourceLimits=NONE",
            "GresTypes=gpu",
            "JobAcctGatherType=jobacct_gather/linux",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={ports.slurmdbd}",
            # Connections to slurmdbd ignore AuthInfo and take their MUNGE socket from here.
            f"AccountingStoragePass={self.munge_socket}",
            "AccountingStorageTRES=gres/gpu",
            f"NodeName={self._node_range()} NodeHostname={self.hostname} NodeAddr=127.0.0.1"
            f" Port={ports.slurmd_first}-{last_slurmd_port} CPUs={self.cpus_per_node}"
            f" RealMemory={self.real_memory_mb} Gres=gpu:{self.gpus_per_node}"
            # A node feature for cluster.constraint's test (tests/test_chain_slurm.py).
            f" Features={NODE_FEATURE} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes={self._node_range()} Default=YES"
            f" MaxTime={self.max_time_minutes} State=UP",
        ]
        return "\n".join(lines) + "\n"

    def _gres_conf(self) -> str:
        last = self.gpus_per_node - 1
        lines = ["AutoDetect=off"]
        lines += [
            f"NodeName={node} Name=gpu File={self.fake_gpu_dir}/{node}/gpu[0-{last}]"
            for node in self.nodes
        ]
        return "\n".join(lines) + "\n"

    def _slurmdbd_conf(self) -> str:
        ports = self._ports()
        lines = [
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"DbdHost={self.hostname}",
            "DbdAddr=127.0.0.1",
            f"DbdPort={ports.slurmdbd}",
            "SlurmUser=root",
            f"LogFile={self.slurmdbd_log}",
            f"PidFile={self.folder}/run/slurmdbd.pid",
            "DebugLevel=info",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={ports.mariadb}",
            "StorageUser=slurm",
            f"StoragePass={self._db_password}",
            "StorageLoc=slurm_acct_db",
        ]
        return "\n".join(lines) + "\n"

    def _ports(self) -> Ports:
        if self.ports is None:
            raise SlurmClusterError("ports not chosen yet")
        return self.ports

    # ----- daemons -----------------------------------------------------------------

    def _daemon_env(self) -> dict[str, str]:
        # Drop SLURM_* of an enclosing job (tests may themselves run under Slurm).
        env = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
        env.update(self.env)
        return env

    def _console_path(self, name: str) -> Path:
        # Slurm daemons in the foreground copy every log line to stdout as well, without
        # timestamps: kept apart from their own (timestamped) log file to avoid doubles.
        return self.log_dir / f"{name}.console.log"

    def _spawn(
        self, name: str, argv: Sequence[str], console_path: Path, user: str | None = None
    ) -> _Daemon:
        with open(console_path, "ab") as log:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._daemon_env(),
                cwd=self._runtime() if user else self.folder,
                # Own session: a Ctrl-C in the terminal reaches only us, and we then stop
                # the daemons in order.
                start_new_session=True,
                preexec_fn=_die_with_parent,
                user=user,
                group=user,
                extra_groups=[] if user else None,
            )
        daemon = _Daemon(name, process, console_path)
        self._daemons.append(daemon)
        return daemon

    def _daemon_alive(self, name: str) -> bool:
        return any(d.name == name and d.process.poll() is None for d in self._daemons)

    def _start_mariadb(self) -> None:
        data_dir = self.folder / "mariadb"
        if not (data_dir / "mysql").is_dir():
            self._install_mariadb(data_dir)
        init_sql = self.folder / "mariadb-init.sql"
        # --init-file runs with the grant tables loaded, before the port opens, so the
        # account exists once the port accepts. The password changes on every start.
        init_sql.write_text(
            "CREATE DATABASE IF NOT EXISTS slurm_acct_db;\n"
            f"CREATE OR REPLACE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{self._db_password}';\n"
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';\n"
        )
        init_sql.chmod(0o600)
        argv = [
            _require_binary("mariadbd"),
            "--no-defaults",
            f"--datadir={data_dir}",
            "--user=root",
            "--bind-address=127.0.0.1",
            f"--port={self._ports().mariadb}",
            f"--socket={self._runtime() / 'mariadb.sock'}",
            f"--pid-file={self.folder / 'run' / 'mariadb.pid'}",
            f"--init-file={init_sql}",
            "--skip-name-resolve",
            *self._mariadb_tuning(),
        ]
        daemon = self._spawn("mariadb", argv, self.mariadb_log)
        self._wait_for(daemon, "MariaDB port", lambda: _port_accepts(self._ports().mariadb))

    @staticmethod
    def _mariadb_tuning() -> list[str]:
        # Small and fast: throw-away data, so durability does not matter. slurmdbd then
        # logs "Database settings not recommended values": harmless here (meeting them
        # costs ~100 MB of disk and seconds of start time per cluster).
        return [
            "--innodb-log-file-size=8M",
            "--innodb-buffer-pool-size=64M",
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
            "--innodb-lock-wait-timeout=900",
            "--skip-log-bin",
        ]

    def _install_mariadb(self, data_dir: Path) -> None:
        argv = [
            _require_binary("mariadb-install-db"),
            "--no-defaults",
            f"--datadir={data_dir}",
            "--user=root",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
            "--innodb-log-file-size=8M",
        ]
        log_path = self._install_log
        with open(log_path, "ab") as log:
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=120
            )
        if result.returncode != 0:
            raise SlurmClusterError(
                f"mariadb-install-db failed (exit {result.returncode}):\n{_tail(log_path)}"
            )

    def _start_munged(self) -> None:
        munge_dir = self.munge_socket.parent
        argv = [
            _require_binary("munged"),
            "--foreground",
            f"--socket={self.munge_socket}",
            f"--key-file={munge_dir / 'munge.key'}",
            f"--pid-file={munge_dir / 'munged.pid'}",
            f"--seed-file={munge_dir / 'munged.seed'}",
            # In the foreground it logs to stderr, which goes to our log file; the munge
            # user could not write into the root-only test folder anyway.
            "--log-file=/dev/null",
        ]
        daemon = self._spawn("munged", argv, self.munged_log, user="munge")
        self._wait_for(daemon, "MUNGE socket", self.munge_socket.exists)

    def _start_slurmdbd(self) -> None:
        argv = [_require_binary("slurmdbd"), "-D"]
        daemon = self._spawn("slurmdbd", argv, self._console_path("slurmdbd"))
        self._wait_for(daemon, "slurmdbd port", lambda: _port_accepts(self._ports().slurmdbd))

    def _register_cluster(self) -> None:
        argv = [_require_binary("sacctmgr"), "-i", "add", "cluster", self.cluster_name]

        def registered() -> bool:
            result = self._client(argv)
            # A restart on an existing folder finds the cluster already there.
            return result.returncode == 0 or "already exists" in result.stdout

        self._wait_for(self._daemon("slurmdbd"), "sacctmgr add cluster", registered)

    def _start_slurmctld(self) -> None:
        argv = [_require_binary("slurmctld"), "-D", "-f", str(self.conf_path)]
        daemon = self._spawn("slurmctld", argv, self._console_path("slurmctld"))
        ping = [_require_binary("scontrol"), "ping"]
        self._wait_for(daemon, "slurmctld", lambda: "is UP" in self._client(ping).stdout)

    def _start_slurmds(self) -> None:
        slurmd = _require_binary("slurmd")
        for node in self.nodes:
            argv = [slurmd, "-D", "-N", node, "-f", str(self.conf_path)]
            name = f"slurmd-{node}"
            self._spawn(name, argv, self._console_path(name))

    def _wait_nodes_idle(self) -> None:
        argv = [_require_binary("sinfo"), "-h", "-N", "-p", self.partition, "-o", "%N %t"]

        def all_idle() -> bool:
            for daemon in self._daemons:
                self._check_alive(daemon)
            states = dict(line.split() for line in self._client(argv).stdout.splitlines())
            return all(states.get(node) == "idle" for node in self.nodes)

        self._wait_for(None, "both nodes idle in sinfo", all_idle)

    def _daemon(self, name: str) -> _Daemon:
        for daemon in self._daemons:
            if daemon.name == name:
                return daemon
        raise SlurmClusterError(f"{name} was not started")

    # ----- waiting and errors --------------------------------------------------------

    def _wait_for(self, daemon: _Daemon | None, what: str, ready: Callable[[], bool]) -> None:
        while True:
            if daemon is not None:
                self._check_alive(daemon)
            if ready():
                return
            if time.monotonic() > self._deadline:
                raise self._failure(
                    f"timed out after {self.start_timeout_s:.0f} s waiting for {what}"
                )
            time.sleep(0.2)

    def _check_alive(self, daemon: _Daemon) -> None:
        code = daemon.process.poll()
        if code is not None:
            raise self._failure(f"{daemon.name} exited with status {code}")

    def _failure(self, message: str) -> SlurmClusterError:
        paths = [self._install_log, *(daemon.console_path for daemon in self._daemons)]
        tails = [
            f"--- {path} (last {_LOG_TAIL_LINES} lines) ---\n{_tail(path)}"
            for path in paths
            if path.exists()
        ]
        return SlurmClusterError(
            f"Slurm test cluster in {self.folder}: {message}\n" + "\n".join(tails)
        )

    def _client(
        self, argv: Sequence[str], timeout: float = 20.0
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                list(argv),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self._daemon_env(),
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as error:
            return subprocess.CompletedProcess(list(argv), 124, "", f"timed out: {error}")

    # ----- teardown ----------------------------------------------------------------

    def _cancel_all_jobs(self, timeout_s: float = 20.0) -> None:
        # slurmstepd and job processes are not our children: a job still running when its
        # slurmd stops would outlive the cluster. Cancel all jobs and let them end first.
        squeue = [_require_binary("squeue"), "-h", "-o", "%A %T"]
        deadline = time.monotonic() + timeout_s
        cancelled: set[str] = set()
        while time.monotonic() < deadline:
            result = self._client(squeue)
            if result.returncode != 0:
                return
            active = [
                line.split()[0]
                for line in result.stdout.splitlines()
                if line.split()[1] in _ACTIVE_JOB_STATES
            ]
            if not active:
                return
            fresh = [job for job in active if job not in cancelled]
            if fresh:
                self._client([_require_binary("scancel"), *fresh])
                cancelled.update(fresh)
            time.sleep(0.5)


# Job states in which processes may still run on a node (everything else is finished).
_ACTIVE_JOB_STATES = frozenset(
    {
        "PENDING",
        "RUNNING",
        "SUSPENDED",
        "COMPLETING",
        "CONFIGURING",
        "STAGE_OUT",
        "SIGNALING",
        "RESIZING",
        "REQUEUED",
        "REQUEUE_HOLD",
        "REQUEUE_FED",
        "STOPPED",
    }
)


def _terminate(process: subprocess.Popen[bytes], grace_s: float = 15.0) -> None:
    # Only ever signals the pid we spawned, and only while it is still our child
    # (poll() reaps it, so the pid cannot have been reused behind our back).
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _environ_of(pid: int) -> dict[bytes, bytes]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def _comm_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _kill_leftover_job_processes(conf_path: Path) -> None:
    # Last resort, after the jobs could not be cancelled in time: slurmstepd and job
    # processes of *this* cluster (they carry its SLURM_CONF, and a job id or the
    # slurmstepd name) would otherwise outlive it. A shell that merely exported our
    # SLURM_CONF has no SLURM_JOB_ID and is left alone.
    ours = str(conf_path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        environ = _environ_of(pid)
        if environ.get(b"SLURM_CONF") != ours:
            continue
        if _comm_of(pid) == "slurmstepd" or b"SLURM_JOB_ID" in environ:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# ----- command line ----------------------------------------------------------------


def _serve_until_interrupted(cluster: SlurmCluster) -> None:
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    while not stop.wait(1.0):
        for daemon in cluster._daemons:
            if daemon.process.poll() is not None:
                print(f"{daemon.name} exited; stopping the cluster", file=sys.stderr)
                return


def _cmd_up(folder: Path) -> int:
    started = time.monotonic()
    with SlurmCluster(folder) as cluster:
        print(f"Slurm test cluster up in {time.monotonic() - started:.1f} s: {cluster.folder}")
        print(f"  partition {cluster.partition}, nodes {', '.join(cluster.nodes)}")
        print(f"  logs in {cluster.log_dir}")
        print(f"export SLURM_CONF={cluster.conf_path}")
        print("Ctrl-C stops it.", flush=True)
        _serve_until_interrupted(cluster)
        print("stopping...", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.slurm_cluster", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a cluster in FOLDER until Ctrl-C")
    up.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    if args.command == "up":
        return _cmd_up(args.folder)
    return 2


if __name__ == "__main__":
    sys.exit(main())
