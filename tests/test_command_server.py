"""The command server (runtime/commands.py, runtime/relay.py): quick commands run in a fork of
a process that has imported everything already, and nothing a user can see differs from
running them in their own process — output, exit status, working directory, umask, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mrbatch.config.workspace import Workspace
from mrbatch.runtime import relay, relay_wire, supervisor
from tests.conftest import Deployment, make_workspace
from tests.helpers import eventually, finished, mrbatch, put

COMMANDS = supervisor.Proc("commands", "commands")
NOT_RELAYED = 97
# A client that says whether the server ran its command: exit 97 when it did not.
CLIENT = (
    "import sys\n"
    "from mrbatch.runtime.relay import relay\n"
    "code = relay(sys.argv[1:])\n"
    f"sys.exit({NOT_RELAYED} if code is None else code)\n"
)
SAMPLE = (
    Path(__file__).resolve().parents[1] / "src/mrbatch/config/samples/orders.csv"
).read_bytes()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    ws = make_workspace(tmp_path_factory.mktemp("commands") / "ws")
    with Deployment(ws):
        finished(ws, put(ws, "input/orders.csv", SAMPLE))
        yield ws


def _client(cwd: Path, *args: str, **popen: object) -> subprocess.Popen[str]:
    script = str(popen.pop("script", CLIENT))
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        text=True,
        stdout=popen.pop("stdout", subprocess.PIPE),
        stderr=subprocess.PIPE,
        stdin=popen.pop("stdin", subprocess.DEVNULL),
        **popen,  # type: ignore[call-overload]
    )


def _relayed(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = _client(cwd, *args)
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _forks(ws: Workspace) -> list[int]:
    """The commands the server runs now: its children."""
    server = supervisor.pid_of(ws, COMMANDS)
    assert server is not None
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == server and fields[0] != "Z":
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize(
    "args",
    [
        ("runs",),
        ("runs", "--json"),
        ("errors", "input/nope.csv"),
        ("wait", "input/nope.csv", "--timeout", "2s"),
        ("wait", "--timeout", "5s"),
        ("get", "output/nope.csv", "-o", "-"),
        ("--help",),
        ("runs", "--help"),
        ("--version",),
        ("status", "--nonsense"),
    ],
)
def test_a_relayed_command_prints_and_exits_as_in_its_own_process(
    deployed: Workspace, args: tuple[str, ...]
) -> None:
    relayed = _relayed(deployed.root, *args)
    assert relayed.returncode != NOT_RELAYED, relayed.stderr
    own = mrbatch(deployed, *args, env={**os.environ, "MRBATCH_IN_PROCESS": "1"})
    assert (relayed.returncode, relayed.stdout, relayed.stderr) == (
        own.returncode,
        own.stdout,
        own.stderr,
    )


def test_status_names_the_command_server(deployed: Workspace) -> None:
    relayed = _relayed(deployed.root, "status", "--json")
    assert relayed.returncode == 0, relayed.stderr
    commands = json.loads(relayed.stdout)["commands"]
    assert commands["alive"] and commands["pid"] == supervisor.pid_of(deployed, COMMANDS)


def test_put_and_get_use_the_clients_directory_and_umask(
    deployed: Workspace, tmp_path: Path
) -> None:
    (tmp_path / "fresh.csv").write_bytes(SAMPLE.replace(b"\n", b"\r\n"))
    uploaded = _relayed(tmp_path, "--config", str(deployed.config_path), "put", "fresh.csv")
    assert uploaded.returncode == 0, uploaded.stderr
    assert "input/fresh.csv" in uploaded.stdout
    waited = _relayed(tmp_path, "-c", str(deployed.config_path), "wait", "input/fresh.csv")
    assert waited.returncode == 0 and "COMPLETED" in waited.stdout, waited
    old = os.umask(0o027)
    try:
        got = _relayed(tmp_path, "-c", str(deployed.config_path), "get", "output/fresh.csv",
                       "-o", "out.csv")  # fmt: skip
    finally:
        os.umask(old)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "out.csv").stat().st_mode & 0o777 == 0o640
    own = mrbatch(deployed, "get", "output/fresh.csv", "-o", "-",
                  env={**os.environ, "MRBATCH_IN_PROCESS": "1"})  # fmt: skip
    assert (tmp_path / "out.csv").read_text() == own.stdout


def _blocked_put(ws: Workspace) -> tuple[subprocess.Popen[str], int]:
    """A relayed `put` reading the client's stdin, which stays open: it waits for ever."""
    before = set(_forks(ws))
    client = _client(ws.root, "put", "/dev/stdin", "--key", "input/blocked.csv",
                     stdin=subprocess.PIPE)  # fmt: skip
    fork = eventually(lambda: next(iter(set(_forks(ws)) - before), None), 30, "the fork")
    time.sleep(0.5)  # inside the upload, blocked on the read
    assert client.poll() is None
    return client, fork


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def test_ctrl_c_reaches_the_command(deployed: Workspace) -> None:
    client, fork = _blocked_put(deployed)
    client.send_signal(signal.SIGINT)
    _out, err = client.communicate(timeout=30)
    assert client.returncode == 130, err
    eventually(lambda: _gone(fork), 10, "the command to end")
    assert client.stdin is not None and client.stdin.closed


def test_a_client_killed_takes_its_command_with_it(deployed: Workspace) -> None:
    client, fork = _blocked_put(deployed)
    client.kill()
    client.communicate(timeout=30)
    eventually(lambda: _gone(fork), 10, "the command of a killed client to end")


def test_another_installation_is_refused_and_the_server_restarts(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    with Deployment(ws):
        server = supervisor.pid_of(ws, COMMANDS)
        run_dir = ws.data_dir / "run"
        # The deployment is up once the regions beat and the gateway answers; the server may
        # still be binding its socket (a client would then run the command itself).
        eventually(lambda: (run_dir / relay.SOCKET_NAME).exists() or None, 30, "the socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(relay.socket_address(run_dir))
            request = {"argv": ["runs"], "cwd": str(ws.root), "env": {}, "umask": 0o22,
                       **relay.installation(), "version": "0.0.0-other"}  # fmt: skip
            relay_wire.send(sock, request, [0, 1, 2])
            answer, _ = relay_wire.receive(sock)
        assert answer == {"refused": "another mrbatch installation"}
        # It ends, so that its restart imports the mrbatch installed now; meanwhile and after,
        # a command runs (in its own process, then through the new server).
        eventually(lambda: _gone(server), 15, "the server to end")
        assert mrbatch(ws, "runs").returncode == 0
        # What the supervisor does with a process that ended (this deployment has none).
        restarted = supervisor.start(ws, [COMMANDS])[COMMANDS][0]
        assert restarted != server
        eventually(lambda: (run_dir / relay.SOCKET_NAME).exists() or None, 30, "the socket")
        assert _relayed(ws.root, "runs").returncode == 0


def test_a_message_sent_with_its_descriptors_survives_a_server_that_answered_and_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The race a refused client lost: the whole message went with the descriptors, and the
    # server read it, answered and closed before the client's send returned.
    client, server = socket.socketpair()
    real_send_fds = socket.send_fds

    def send_then_server_closes(sock: socket.socket, buffers: list[bytes], fds: list[int]) -> int:
        sent = real_send_fds(sock, buffers, fds)
        server.close()
        return sent

    monkeypatch.setattr(socket, "send_fds", send_then_server_closes)
    with client:
        relay_wire.send(client, {"argv": ["runs"]}, [0, 1, 2])  # nothing left: no EPIPE


def test_the_code_stamp_follows_any_mrbatch_module_it_imported(tmp_path: Path) -> None:
    """What makes the server refuse when mrbatch's code changed under it (an upgrade, an edit
    of an editable install). Tested on a module of its own: touching a real one would turn
    away the command servers of every other test running meanwhile."""
    from mrbatch.runtime.commands import _code_stamp

    probe = tmp_path / "probe.py"
    probe.write_text("")
    module = type(sys)("mrbatch._stamp_probe")
    module.__file__ = str(probe)
    sys.modules[module.__name__] = module
    try:
        before = _code_stamp()
        stat = probe.stat()
        os.utime(probe, ns=(stat.st_atime_ns, max(before, stat.st_mtime_ns) + 10**9))
        assert _code_stamp() > before
        probe.unlink()
        assert _code_stamp() == -1  # a module gone is a change too
    finally:
        del sys.modules[module.__name__]


def test_without_a_server_the_command_runs_in_its_own_process(workspace: Workspace) -> None:
    relayed = _relayed(workspace.root, "runs")
    assert relayed.returncode == NOT_RELAYED
    assert mrbatch(workspace, "runs").returncode == 0


def test_a_piped_upload_is_accepted_either_way(deployed: Workspace) -> None:
    for key, environment in (("input/piped-relayed.csv", {}), ("input/piped-own.csv",
                             {"MRBATCH_IN_PROCESS": "1"})):  # fmt: skip
        piped = subprocess.run(
            [sys.executable, "-m", "mrbatch.cli.main", "put", "/dev/stdin", "--key", key],
            input=SAMPLE,
            capture_output=True,
            cwd=deployed.root,
            env={**os.environ, **environment},
            timeout=60,
        )
        assert piped.returncode == 0, piped.stderr
        waited = mrbatch(deployed, "wait", key)
        assert waited.returncode == 0 and "COMPLETED" in waited.stdout, waited


def test_a_stopped_server_fails_the_command_instead_of_hanging_it(deployed: Workspace) -> None:
    server = supervisor.pid_of(deployed, COMMANDS)
    assert server is not None
    impatient = CLIENT.replace(
        "from mrbatch.runtime.relay import relay\n",
        "from mrbatch.runtime import relay as module\nmodule.HANDSHAKE_TIMEOUT = 1.0\n"
        "relay = module.relay\n",
    )
    os.kill(server, signal.SIGSTOP)
    try:
        stuck = _client(deployed.root, "put", "/dev/null", "--key", "input/never.csv",
                        script=impatient)  # fmt: skip
        code = stuck.wait(timeout=60)
    finally:
        # Until it runs again the server holds the client's stdout and stderr (passed to it),
        # so the client's output ends only then.
        os.kill(server, signal.SIGCONT)
    _out, err = stuck.communicate(timeout=60)
    assert code == 1, err
    assert "did not start the command within 1s" in err
    # Woken up, the server finds its client gone: the command never runs, and the next one does.
    assert _relayed(deployed.root, "runs").returncode == 0
    assert eventually(lambda: not _forks(deployed) or None, 10, "no command left running")
    listed = mrbatch(deployed, "runs", "--json")
    assert "input/never.csv" not in listed.stdout
