"""A search over several machines: KerasTuner's own chief/worker mode.

Every process runs the same command; the environment says which is which
(`KERASTUNER_TUNER_ID=chief|tuner0|tuner1...`, and `KERASTUNER_ORACLE_IP` /
`KERASTUNER_ORACLE_PORT`: where the chief's oracle listens). The chief serves the oracle over
gRPC and runs no trials; workers ask it for trials until the budget is spent; then the chief's
pipeline trains the best and exports.
"""

from __future__ import annotations

import os
import socket
import time

from tfpipeline.errors import UserError

ENV_TUNER_ID = "KERASTUNER_TUNER_ID"
ENV_ORACLE_IP = "KERASTUNER_ORACLE_IP"
ENV_ORACLE_PORT = "KERASTUNER_ORACLE_PORT"


def role() -> str:
    """"alone", or KerasTuner's distributed "chief" / "worker" (from its environment).

    Raises:
        UserError: the environment names an oracle but not its port or this process's id.
    """
    if ENV_ORACLE_IP not in os.environ:
        return "alone"
    missing = [name for name in (ENV_ORACLE_PORT, ENV_TUNER_ID) if not os.environ.get(name)]
    if missing:
        raise UserError(f"{ENV_ORACLE_IP} is set, so this is a distributed search, but {' and '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not: set {ENV_TUNER_ID}=chief on one process "
                        f"and tuner0, tuner1, ... on the others, and {ENV_ORACLE_PORT} to the chief's port.")
    if not os.environ[ENV_ORACLE_PORT].isdigit():
        raise UserError(f"{ENV_ORACLE_PORT} must be a port number, got {os.environ[ENV_ORACLE_PORT]!r}.")
    return "chief" if "chief" in os.environ[ENV_TUNER_ID] else "worker"


def tuner_id() -> str:
    """This process's KerasTuner id (`KERASTUNER_TUNER_ID`)."""
    return os.environ[ENV_TUNER_ID]


def oracle_address() -> str:
    """host:port of the chief's oracle."""
    return f"{os.environ[ENV_ORACLE_IP]}:{os.environ[ENV_ORACLE_PORT]}"


def wait_for_chief(timeout: float = 3600) -> None:
    """A worker starts once the chief listens: the chief has then also written run.json.

    Raises:
        UserError: no chief answered within `timeout` seconds.
    """
    host, port = os.environ[ENV_ORACLE_IP], int(os.environ[ENV_ORACLE_PORT])
    print(f"Worker {tuner_id()}: waiting for the chief's oracle at {host}:{port}...", flush=True)
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise UserError(f"No chief answered at {host}:{port} within {timeout:.0f} s: start the same "
                                f"command with {ENV_TUNER_ID}=chief there.") from None
            time.sleep(1)
