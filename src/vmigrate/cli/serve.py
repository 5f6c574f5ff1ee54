"""`vmigrate serve`: the API, live events, metrics and dashboard over the same store as the
CLI; `vmigrate serve token add|list|rm`: who may use it."""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import click
from rich.console import Console

from vmigrate.cli.options import store_option
from vmigrate.errors import UsageError
from vmigrate.serve.tokens import ROLES, TokenFile
from vmigrate.store import StoreLocation, redact_uri

# One line each (greppable); no emoji codes: a fingerprint holds ":CD:", rich drew a disc.
console = Console(highlight=False, stderr=True, soft_wrap=True, emoji=False)
DEFAULT_LISTEN = "127.0.0.1:8443"


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise UsageError(
            f"--listen {value!r} is not ADDRESS:PORT",
            fix="e.g. --listen 127.0.0.1:8443, or 0.0.0.0:8443 for every address",
        )
    return host, int(port)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


tokens_option = click.option(
    "--tokens",
    "tokens_path",
    type=click.Path(path_type=Path),
    help="Tokens file [default: ~/.config/vmigrate/serve/tokens.json].",
)


@click.group("serve", invoke_without_command=True)
@click.option(
    "--listen", default=DEFAULT_LISTEN, show_default=True, help="Address and port to serve on."
)
@click.option("--cert", type=click.Path(path_type=Path), help="TLS certificate (PEM).")
@click.option("--key", type=click.Path(path_type=Path), help="Its private key (PEM).")
@click.option(
    "--insecure-http",
    is_flag=True,
    help="Serve plain HTTP: tokens cross the network readable. Only behind a TLS proxy.",
)
@click.option(
    "--hosts",
    "hosts_file",
    type=click.Path(path_type=Path),
    help="Hosts file [default: ~/.config/vmigrate/hosts.toml].",
)
@click.option(
    "--inventory-ttl",
    type=click.FloatRange(min=0.5),
    default=5.0,
    show_default=True,
    help="Seconds the hosts' facts are shown before they are read again.",
)
@tokens_option
@store_option
@click.pass_context
def serve(
    ctx: click.Context,
    listen: str,
    cert: Path | None,
    key: Path | None,
    insecure_http: bool,
    hosts_file: Path | None,
    inventory_ttl: float,
    tokens_path: Path | None,
    store_path: StoreLocation | None,
) -> None:
    """Serve the REST API (/api, described at /api/openapi.json), live events (SSE),
    Prometheus metrics (/metrics) and the dashboard (/), over HTTPS, to token holders."""
    ctx.obj = tokens_path
    if ctx.invoked_subcommand is not None:
        return
    import uvicorn

    from vmigrate.hosts import known_hosts
    from vmigrate.serve.app import ServeConfig, create_app
    from vmigrate.serve.tls import server_certificate
    from vmigrate.store import JobStore

    host, port = parse_listen(listen)
    known_hosts(hosts_file)  # a hosts file that cannot be read fails now, plainly
    tokens = TokenFile(tokens_path)
    with JobStore(store_path) as store:  # opened once here: a bad store fails now, plainly
        where = redact_uri(str(store.path))
    ssl_cert: str | None = None
    ssl_key: str | None = None
    scheme = "http"
    if insecure_http:
        if cert or key:
            raise UsageError("--insecure-http and --cert/--key contradict each other",
                             fix="drop one")  # fmt: skip
        console.print(
            "[bold red]WARNING: plain HTTP. API tokens and every answer cross the network "
            "readable by anyone on the path."
            + ("" if _loopback(host) else f" {host} is not a loopback address.")
            + " Use it only behind a TLS-terminating proxy.[/]"
        )
    else:
        certificate = server_certificate(host, cert, key)
        ssl_cert, ssl_key = str(certificate.cert_path), str(certificate.key_path)
        scheme = "https"
        how = "made by this server" if certificate.made else "given"
        console.print(f"certificate ({how}): {certificate.cert_path}", markup=False)
        console.print(f"SHA-256 fingerprint: {certificate.fingerprint}", markup=False)
    if not tokens.entries():
        console.print(
            f"[yellow]no API token in {tokens.path} yet: make one with "
            "`vmigrate serve token add NAME --role operate`[/]"
        )
    console.print(f"store: {where}", markup=False)
    console.print(f"serving on {scheme}://{host}:{port}/ (dashboard), /api, /metrics", markup=False)
    logging.getLogger("vmigrate.serve").setLevel(logging.INFO)
    app = create_app(ServeConfig(store_path, hosts_file, tokens, inventory_ttl_s=inventory_ttl))
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=5,
        ssl_certfile=ssl_cert,
        ssl_keyfile=ssl_key,
    )


@serve.group("token")
def token() -> None:
    """API tokens: shown once when made, stored hashed."""


@token.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True, help="read: look; operate: act.")
@click.pass_obj
def token_add(tokens_path: Path | None, name: str, role: str) -> None:
    """Make a token for NAME and print it (the only time it is shown)."""
    tokens = TokenFile(tokens_path)
    value = tokens.add(name, role)
    console.print(f"token {name!r} ({role}) added to {tokens.path}; it is shown only now:")
    click.echo(value)


@token.command("list")
@click.pass_obj
def token_list(tokens_path: Path | None) -> None:
    """The tokens' names and roles (never the tokens)."""
    tokens = TokenFile(tokens_path)
    entries = tokens.entries()
    if not entries:
        console.print(f"no token in {tokens.path}")
    for entry in entries:
        click.echo(f"{entry.name}\t{entry.role}")


@token.command("rm")
@click.argument("name")
@click.pass_obj
def token_rm(tokens_path: Path | None, name: str) -> None:
    """Remove a token: it stops working at once, even on a running server."""
    TokenFile(tokens_path).remove(name)
    console.print(f"token {name!r} removed")
