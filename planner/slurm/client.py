"""Whether Slurm can be asked here, and why not: no client, a client that cannot run, or a
controller that does not answer.

Three situations look alike from a failed `scontrol` and must not be confused:
- no Slurm: the commands are missing, or on PATH but not runnable (not executable, not a
  program): a laptop, a container. plan-job plans without partition limits.
- Slurm installed, controller unreachable: a workstation with the package and no
  slurm.conf ("Could not establish a configuration source"), a login node during a
  controller restart ("Unable to contact slurm controller"), a copied slurm.conf. The
  planning commands go on without the partition and say why; the commands that submit
  stop (exit 2) before they write anything.
- anything else (an unknown partition, an authentication error): a real error.

Slurm's clients retry a dead controller for about MessageTimeout seconds (10 by default),
per call; `scontrol ping` makes one attempt and answers in milliseconds, so it is asked
first and a dead controller costs a plan one ping, not a retry loop per command.
Torch-free.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from planner.errors import CommandError, ControllerUnreachableError, SlurmUnavailableError
from planner.shell import (
    EXIT_NOT_FOUND,
    EXIT_NOT_RUNNABLE,
    EXIT_TIMED_OUT,
    CommandResult,
    run_command,
)

# What Slurm's clients print when they cannot reach (or find) a controller, as opposed to a
# controller that answered "no".
UNREACHABLE_MARKERS = (
    "could not establish a configuration source",
    "unable to process configuration file",
    "unable to contact slurm controller",
    "unable to establish a connection",
    "socket timed out",
    "connection refused",
    "connect failure",
    "communication connection failure",
    "zero bytes were transmitted or received",
)
# One scontrol ping: a healthy controller answers in milliseconds; one whose host drops
# packets leaves the connect waiting, and no plan should wait on it longer than this.
PING_TIMEOUT_S = 15.0
# A read of the partition once the ping answered: Slurm's own retries end by then.
READ_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ClientStatus:
    """ok, or why not: kind is "ok", "missing" (no usable client) or "unreachable"."""

    kind: str
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == "ok"


def is_unreachable(exc: CommandError) -> bool:
    """A client's failure that says the controller could not be reached (or configured)."""
    if exc.returncode == EXIT_TIMED_OUT:
        return True
    text = f"{exc.stderr}\n{exc.stdout}".lower()
    return any(marker in text for marker in UNREACHABLE_MARKERS)


def is_missing(exc: CommandError) -> bool:
    return exc.returncode in (EXIT_NOT_FOUND, EXIT_NOT_RUNNABLE)


def reason_of(exc: CommandError) -> str:
    """Slurm's clients explain in their last lines; the first ones are resolver noise."""
    lines = [line.strip() for line in (exc.stderr or exc.stdout).strip().splitlines()]
    lines = [line for line in lines if line and not line.startswith("*")]
    return lines[-1] if lines else f"{exc.argv[0]} exited {exc.returncode}"


def classify(exc: CommandError, what: str) -> SlurmUnavailableError | None:
    """The SlurmUnavailableError a client's failure means, or None for a real error.
    ``what`` says what could not be read, for the message."""
    if is_missing(exc):
        return SlurmUnavailableError(f"no Slurm client here ({reason_of(exc)}): {what}")
    if is_unreachable(exc):
        return ControllerUnreachableError(
            f"Slurm's controller does not answer ({exc.argv[0]}: {reason_of(exc)}): {what}"
        )
    return None


def client_status(commands: Sequence[str] = ("scontrol",)) -> ClientStatus:
    """Whether ``commands`` can run here and the controller answers a ping."""
    for name in commands:
        if shutil.which(name) is None:
            found = shutil.which(name, mode=0)  # on PATH, but not executable?
            why = f"{found} is not executable" if found else f"{name} is not on PATH"
            return ClientStatus("missing", why)
    conf = os.environ.get("SLURM_CONF")
    if conf and not os.path.isfile(conf):
        # The clients wait up to 60 s for a configuration file to appear: not worth a ping.
        return ClientStatus("unreachable", f"SLURM_CONF={conf} is not a file")
    try:
        result = run_command(["scontrol", "ping"], check=False, timeout=PING_TIMEOUT_S)
    except CommandError as exc:  # not runnable, or no answer within the timeout
        return ClientStatus("missing" if is_missing(exc) else "unreachable", reason_of(exc))
    # With a backup controller, a ping lists each; one that is UP is enough.
    if result.ok or " is UP" in result.stdout:
        return ClientStatus("ok")
    failure = CommandError(list(result.argv), result.returncode, result.stdout, result.stderr)
    if is_missing(failure):
        return ClientStatus("missing", reason_of(failure))
    # A ping that fails is the controller not answering, whatever the words.
    return ClientStatus("unreachable", reason_of(failure))


def require_controller(
    command: str,
    commands: Sequence[str] = ("scontrol", "sbatch", "squeue", "scancel"),
    alternative: str = "",
) -> None:
    """For the commands that submit: SlurmUnavailableError (exit 2) naming the reason unless
    the client runs and the controller answers. Called before anything is written."""
    status = client_status(commands)
    more = f", {alternative}" if alternative else ""
    if status.kind == "missing":
        raise SlurmUnavailableError(
            f"{command} needs Slurm, and there is no Slurm client here "
            f"({status.reason}): run it on the cluster's login node{more}"
        )
    if status.kind == "unreachable":
        raise ControllerUnreachableError(
            f"{command} needs Slurm, and its controller does not answer (scontrol ping: "
            f"{status.reason}); nothing was submitted or written. Check SLURM_CONF and that "
            f"slurmctld runs (`scontrol ping`){more}"
        )


def offline_runner(status: ClientStatus) -> Callable[[Sequence[str]], CommandResult]:
    """A runner for planner.slurm's readers that answers every command at once with the
    failure ``status`` found, as the real client would after its retries."""

    def run(argv: Sequence[str]) -> CommandResult:
        if status.kind == "missing":
            raise CommandError(list(argv), EXIT_NOT_FOUND, "", status.reason)
        raise CommandError(
            list(argv),
            1,
            "",
            f"Unable to contact slurm controller (scontrol ping: {status.reason})",
        )

    return run
