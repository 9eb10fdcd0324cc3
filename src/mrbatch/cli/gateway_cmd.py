"""``mrbatch gateway``: run the HTTP gateway alone (``mrbatch up`` starts it with the rest);
``mrbatch gateway token``: the bearer token that uploads through it need; ``mrbatch gateway
rotate-key``: a new key for presigned links."""

from __future__ import annotations

import socket
import time

import typer

from ..access.links import SigningKeys
from ..config.workspace import Workspace
from ..errors import UnavailableError, UsageError
from ..runtime import supervisor
from .app import HELP, app, console, err_console, json_option, print_json, state

__all__ = ["gateway_app"]

gateway_app = typer.Typer(
    help="The HTTP gateway: uploads, presigned links, status API, /metrics and the dashboard.",
    no_args_is_help=False,
    **HELP,  # type: ignore[arg-type]
)
app.add_typer(gateway_app, name="gateway")

_GATEWAY = supervisor.Proc("gateway", "gateway")


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _wait_for(ws: Workspace, timeout: float = 30.0) -> None:
    gateway = ws.config.gateway
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _answers(gateway.host, gateway.port):
            return
        if supervisor.pid_of(ws, _GATEWAY) is None:
            raise UnavailableError(
                "the gateway exited during start",
                hint=f"see {supervisor.log_file(ws, _GATEWAY)}",
            )
        time.sleep(0.05)
    raise UnavailableError(
        f"the gateway did not answer on {gateway.host}:{gateway.port} within {timeout:.0f}s",
        hint=f"see {supervisor.log_file(ws, _GATEWAY)}",
    )


@gateway_app.callback(invoke_without_command=True)
def gateway(
    ctx: typer.Context,
    detach: bool = typer.Option(
        False, "--detach", "-d", help="Run in the background (`mrbatch down` stops it)."
    ),
) -> None:
    """Serve the gateway on gateway.host:gateway.port (127.0.0.1 unless configured)."""
    if ctx.invoked_subcommand is not None:
        return
    ws = state.workspace()
    gateway_config = ws.config.gateway
    pid = supervisor.pid_of(ws, _GATEWAY)
    if pid is not None:
        console.print(f"the gateway is already running (pid {pid}) at {ws.gateway_url}")
        return
    if _answers(gateway_config.host, gateway_config.port):
        raise UsageError(
            f"gateway port {gateway_config.host}:{gateway_config.port} is in use by another"
            " program",
            hint=f"set gateway.port in {ws.config_path}",
        )
    if detach:
        pid, _ = supervisor.start(ws, only=[_GATEWAY])[_GATEWAY]
        _wait_for(ws)
        console.print(f"gateway running (pid {pid}) at {ws.gateway_url}")
        return
    from ..gateway.app import serve

    err_console.print(f"gateway at {ws.gateway_url} (dashboard at /); Ctrl-C stops it")
    serve(ws)


@gateway_app.command("token")
def token() -> None:
    """Print the bearer token for uploads (PUT /objects/KEY with `Authorization: Bearer`)."""
    console.print(state.workspace().token, soft_wrap=True, highlight=False)


@gateway_app.command("rotate-key")
def rotate_key(
    revoke: bool = typer.Option(
        False,
        "--revoke",
        help="Also drop the old keys: every link signed so far stops working at once.",
    ),
    json_output: bool = json_option("Print the outcome as JSON."),
) -> None:
    """Sign links with a new key; a running gateway picks it up.

    Links signed with the old one stay valid until they expire (at most
    gateway.max_link_lifetime), unless --revoke."""
    ws = state.workspace()
    ws.signing_key  # noqa: B018 -- a current key to retire (created if there is none yet)
    keys = SigningKeys(ws.data_dir, ws.config.gateway.max_link_lifetime)
    outcome = keys.rotate(revoke=revoke)
    if json_output:
        print_json(outcome)
        return
    if revoke:
        console.print(f"new signing key; {outcome['revoked']} old key(s) revoked", highlight=False)
    else:
        console.print(
            "new signing key; links signed with the old one stay valid until they expire",
            highlight=False,
        )
