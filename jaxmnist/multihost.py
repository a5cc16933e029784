"""One training run across processes: start-up, who writes, and failing well.

`python -m jaxmnist.train --coordinator HOST:PORT --num-processes N --process-id I`
(or `--distributed` where `jax.distributed.initialize` finds these itself, as on a TPU
pod slice or a SLURM cluster) is process I of one run over the devices of all N:

- every process holds both splits on its devices (MNIST is 55 MB), and each device
  cuts its own rows of each global batch, so no process reads another's data;
- one global mesh, so BatchNorm statistics and gradients are means over the global batch;
- process 0 prepares the TFDS dataset (the others wait), writes config.json,
  metrics.jsonl, curves.png and prints; checkpoints are written by orbax, which
  coordinates the processes itself. The run directory must be on a filesystem that
  every process sees (as orbax requires for many hosts).

When a process dies, the others cannot go on. XLA's coordination service then ends
them with a C++ `LOG(FATAL)` and a stack trace (not a Python exception), either at
once or after `--distributed-timeout`. So each process runs the training in a child
process and reports such an end as one line on stderr, exit code 1.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import jax
from jax._src import distributed
from jax.experimental import multihost_utils

from jaxmnist.cli import UsageError, fail, non_negative_int, positive_int, print_error

# Set in the child that trains, by its supervising parent.
WORKER_ENV = "JAXMNIST_MULTIHOST_WORKER"
# The child's exit code for "another process is gone" (BSD's EX_TEMPFAIL).
PEER_LOST = 75

# A warning or error of XLA's coordination service (absl's log format, or TSL's in older
# jaxlibs) means another process is gone or never came: the supervisor drops it, and
# everything after it, from stderr.
_FATAL_LINE = re.compile(rb"^(?:[WEF]\d{4} |\d{4}-\d\d-\d\d [\d:.]+: [WEF] )"
                         rb".*(coordination_service|client\.h|preemption_sync)")
_GLOO_CHATTER = re.compile(rb"^\[Gloo\] Rank \d+ is connected")
# How long a process that failed asks the coordination service whether another process
# is gone: a peer's death can reach this process (as a collective's error) a moment
# before the service has seen it.
PEER_CHECK_SECONDS = 3.0


class PeerLost(Exception):
    """Another process of the run is gone (the coordination service says so)."""


def add_arguments(parser) -> None:
    g = parser.add_argument_group(
        "many processes (one run over the devices of N processes, e.g. N hosts)")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="address of process 0, which every process can reach")
    g.add_argument("--num-processes", type=positive_int, metavar="N")
    g.add_argument("--process-id", type=non_negative_int, metavar="I")
    g.add_argument("--distributed", action="store_true",
                   help="let jax.distributed.initialize find the three above (TPU pod "
                        "slices, SLURM, ...)")
    g.add_argument("--distributed-timeout", type=positive_int, default=60, metavar="SECONDS",
                   help="how long to wait for all processes to start, and for a silent one "
                        "before giving up (default 60)")


def requested(args) -> bool:
    return bool(args.distributed or args.coordinator or args.num_processes is not None
                or args.process_id is not None)


def check_arguments(parser, args) -> None:
    given = [args.coordinator, args.num_processes, args.process_id]
    if not args.distributed and None in given:
        parser.error("--coordinator, --num-processes and --process-id go together "
                     "(or --distributed alone)")
    if args.process_id is not None and args.num_processes is not None \
            and args.process_id >= args.num_processes:
        parser.error(f"--process-id {args.process_id} must be < --num-processes "
                     f"{args.num_processes}")
    if args.coordinator is not None and not re.fullmatch(r".+:\d+", args.coordinator):
        parser.error(f"--coordinator must be HOST:PORT, got {args.coordinator!r}")


def run(prog: str, argv: list[str], args, train) -> int:
    """The command line's multi-process run: here, the supervising parent (`supervise`);
    in its child, `initialize` then `train()` (which returns an exit code)."""
    if os.environ.get(WORKER_ENV) != "1":
        return supervise(prog, argv, args.process_id)
    # On failure the child leaves without JAX's exit-time shutdown, which would wait for
    # the other processes first.
    try:
        try:
            initialize(args)
        except UsageError as e:
            fail(prog, str(e))
        code = train()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except PeerLost:
        code = PEER_LOST
    except Exception:
        if not peer_lost():
            raise  # this process's own error, with its traceback
        code = PEER_LOST
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return 0


def initialize(args) -> None:
    """`jax.distributed.initialize` with the command line's arguments; CPU devices
    talk through gloo. A UsageError if JAX can find no cluster settings."""
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    timeout = args.distributed_timeout
    try:
        jax.distributed.initialize(
            args.coordinator, args.num_processes, args.process_id,
            initialization_timeout=timeout, heartbeat_timeout_seconds=timeout)
    except ValueError as e:  # --distributed where JAX finds no cluster to ask
        raise UsageError(f"--distributed: {e} JAX found no cluster settings here; give "
                         "--coordinator, --num-processes and --process-id") from None
    # The parent's death closes our stdin: stop rather than train on alone.
    threading.Thread(target=_exit_when_parent_dies, daemon=True).start()


def _exit_when_parent_dies() -> None:
    # The raw descriptor: a thread blocked in a buffered read would hold its lock at exit.
    try:
        while os.read(0, 1 << 16):
            pass
    except OSError:
        pass
    os._exit(PEER_LOST)


def is_main() -> bool:
    """True in the process that writes files and prints (process 0)."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Waits until every process gets here (no-op in a single process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def peer_lost(seconds: float = PEER_CHECK_SECONDS) -> bool:
    """Whether the coordination service says a process of this run is gone (always False
    in a single process). Asked for up to `seconds`; a service that cannot be reached
    (it runs in process 0) counts as gone."""
    if jax.process_count() == 1:
        return False
    client = distributed.global_state.client
    live_nodes = getattr(client, "get_live_nodes", None)
    everyone = list(range(jax.process_count()))
    deadline = time.monotonic() + seconds
    while True:
        if live_nodes is not None:
            try:
                if len(live_nodes(everyone)) < len(everyone):
                    return True
            except Exception:  # the service itself is gone
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def supervise(prog: str, argv: list[str], process_id: int | None) -> int:
    """Runs `python -m jaxmnist.train argv` as a child process and reports its end.

    Its stdout and stderr are passed through as they come (progress bars included)
    except gloo's connection chatter and, once the coordination service reports a
    failure, its messages and C++ stack trace, which become one line."""
    env = {**os.environ, WORKER_ENV: "1"}
    child = subprocess.Popen([sys.executable, "-m", "jaxmnist.train", *argv],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env)
    stdout = threading.Thread(target=_forward, args=(child.stdout.fileno(), sys.stdout.buffer))
    stdout.start()
    # Ctrl-C reaches the child from the terminal itself; a SIGTERM is passed on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda s, _f: child.send_signal(s))
    failure = _forward(child.stderr.fileno(), sys.stderr.buffer)
    stdout.join()
    code = child.wait()
    child.stdin.close()
    who = f"process {process_id}" if process_id is not None else "this process"
    if code == 0 or (code > 0 and code != PEER_LOST and failure is None):
        return code  # done, or an error the child has reported itself
    if failure is not None and b"RegisterTask" in failure:
        message = ("not all processes reached the coordinator in time; start them all "
                   "with the same --coordinator and --num-processes")
    else:
        reason = ("another process stopped or cannot be reached"
                  if failure is not None or code == PEER_LOST
                  else f"its training process was killed (signal {-code})")
        message = (f"{reason}; the newest checkpoint is the last finished epoch: start "
                   "every process again with --resume")
    print_error(prog, f"{who}: {message}")
    return 1


def _forward(fd: int, out) -> bytes | None:
    """Copies `fd` to `out` until EOF; returns the coordination service's failure
    message (None if there was none), from which on nothing more is copied."""
    pending = b""  # the start of a line that may turn out to be dropped
    failure = None
    while chunk := os.read(fd, 1 << 16):
        if failure is not None:
            failure = (failure + chunk)[:1 << 16]
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        keep = []
        for k, line in enumerate(lines):
            if _FATAL_LINE.match(line):
                failure = b"\n".join(lines[k:] + [pending])
                break
            if not _GLOO_CHATTER.match(line):
                keep.append(line + b"\n")
        # A progress bar's update (a partial line starting with a carriage return) goes
        # out now; other partial lines wait for their end, which may make them dropped.
        if failure is None and pending.startswith(b"\r"):
            keep.append(pending)
            pending = b""
        out.write(b"".join(keep))
        out.flush()
    if pending and failure is None:
        out.write(pending)
        out.flush()
    return failure
