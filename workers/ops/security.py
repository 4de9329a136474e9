"""`mbx security init`: a NATS server configuration with one user per role, each allowed the
subjects it uses and no others, a password for each in a file only its owner can read, and TLS
from a generated development CA (or certificates the user gives).

Roles: ``router``; ``executor-<broker>`` for each broker; ``aggregator``; ``parents`` (the
parent-order worker, which sends each parent's children and their cancels on the strategy's own
subjects, as the strategy would); ``strategy-<id>`` for each strategy, which may publish only its
own intents and cancels; ``operator`` (every subject: the CLI's operator commands and the
dashboard, which acts for operators). Each user's replies
come to an inbox of its own (``_INBOX_`` and the user name with ``-`` as ``_``:
``_INBOX_strategy_alpha``), so no user reads another's replies.

The JetStream API is granted per stream (and per KV bucket, a stream ``KV_<bucket>``): the
workers create and update their streams, consumers and buckets at start, fetch from their
durable consumers, ack, read and write KV entries and watch them. Nothing grants deleting or
purging a stream, nor any stream or bucket a role does not use.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from contracts import BrokerName, Subjects
from workers.ops.errors import OperatorError
from workers.platform.access import inbox_prefix
from workers.platform.topology import Topology

PASSWORD_BYTES = 24
CERT_DAYS = 825
"""A development certificate's life (the longest most TLS clients accept)."""


@dataclass(frozen=True)
class Role:
    user: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    streams: tuple[str, ...] = ()
    """Streams (KV buckets as ``KV_<bucket>``) whose JetStream API the role uses."""
    buckets: tuple[str, ...] = ()
    """KV buckets the role writes (``$KV.<bucket>.>``)."""
    responds: bool = False
    """Answers requests (may publish to the requester's reply inbox)."""

    @property
    def inbox(self) -> str:
        return inbox_prefix(self.user)


def jetstream_api(stream: str) -> list[str]:
    """What using a stream takes: its info, creating or updating it to the current definition,
    reading single messages, durable and ephemeral consumers (create, info, delete, fetch), acks
    and flow control."""
    api = "$JS.API"
    return [
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.STREAM.CREATE.{stream}",
        f"{api}.STREAM.UPDATE.{stream}",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.>",
        f"{api}.CONSUMER.DELETE.{stream}.>",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def roles(subjects: Subjects, strategies: list[str], brokers: list[BrokerName]) -> list[Role]:
    """Every user of the deployment and what it may do."""
    s, topology = subjects, Topology(subjects)
    streams = [spec.name for spec in s.streams]

    def kv(*buckets: str) -> tuple[str, ...]:
        return tuple(f"KV_{b}" for b in buckets)

    common_buckets = (s.status_bucket, topology.scrape_bucket)
    router_buckets = (
        s.config_bucket,
        s.approvals_bucket,
        s.exposure_bucket,
        s.fill_quality_bucket,
        topology.decisions_bucket,
        topology.order_ledger_bucket,
        *common_buckets,
    )
    out = [
        Role(
            "router",
            publish=(
                s.all_routes,
                f"{s.prefix}.cancels.>",
                s.all_executions,
                s.all_parent_orders,
                s.all_approvals,
                s.dlq("router"),
            ),
            subscribe=(s.route_preview, s.route_split),
            streams=(*streams, *kv(*router_buckets)),
            buckets=(s.config_bucket, s.approvals_bucket, topology.decisions_bucket, topology.scrape_bucket),
            responds=True,
        ),
        Role(
            "aggregator",
            publish=(s.dlq("aggregator"), s.snapshot_request("*")),
            subscribe=(s.api("portfolio.>"),),
            streams=(
                *streams,
                *kv(s.worker_status_bucket, s.exposure_bucket, s.fill_quality_bucket, *common_buckets),
            ),
            buckets=(s.worker_status_bucket, s.exposure_bucket, s.fill_quality_bucket, topology.scrape_bucket),
            responds=True,
        ),
        Role(
            "parents",
            publish=(
                s.all_intents,
                s.all_cancels,
                s.parent_report("*", "*"),
                s.cancel_reject(None, "*"),
                s.route_split,
                s.dlq("parents"),
            ),
            subscribe=(),
            streams=(*streams, *kv(topology.parents_bucket, *common_buckets)),
            buckets=(topology.parents_bucket, topology.scrape_bucket),
        ),
    ]
    for broker in brokers:
        own = (
            topology.order_ledger_bucket,
            topology.rate_budget_bucket,
            topology.shape_locks_bucket,
            topology.attributions_bucket,
            topology.order_ids_bucket(broker),
            topology.sim_book_bucket(broker),
            s.status_bucket,
            topology.scrape_bucket,
        )
        out.append(
            Role(
                f"executor-{broker}",
                publish=(
                    f"{s.prefix}.exec.{broker}.>",
                    f"{s.prefix}.fills.{broker}.>",
                    s.failover(broker),
                    s.positions(broker),
                    s.status(broker),
                    s.dlq("executor"),
                ),
                subscribe=(s.control(broker), s.snapshot_request(broker)),
                streams=(*streams, *kv(*own, s.config_bucket)),
                buckets=own,
                responds=True,
            )
        )
    for strategy in strategies:
        out.append(
            Role(
                f"strategy-{strategy}",
                publish=(s.intent(strategy), s.cancel(strategy)),
                subscribe=s.results_of(strategy),  # its own routes, reports and fills only
            )
        )
    out.append(Role("operator", publish=(">",), subscribe=(">",)))
    return out


def _quoted(items: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def permissions_block(role: Role) -> str:
    publish = list(role.publish) + [g for stream in role.streams for g in jetstream_api(stream)]
    # Writing a bucket includes purging a key's history (the order ledger's index does).
    publish += [g for b in role.buckets for g in (f"$KV.{b}.>", f"$JS.API.STREAM.PURGE.KV_{b}")]
    subscribe = [f"{role.inbox}.>", *role.subscribe]
    lines = [f"publish: {{ allow: {_quoted(publish)} }}", f"subscribe: {{ allow: {_quoted(subscribe)} }}"]
    if role.responds:
        lines.append("allow_responses: true")
    return "{ " + ", ".join(lines) + " }"


@dataclass
class SecuritySetup:
    """What ``mbx security init`` wrote: the server's config fragment, each user's password
    file, and the TLS files."""

    directory: Path
    users: dict[str, Path] = field(default_factory=dict)
    """User -> its password file."""
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def server_config(self) -> Path:
        return self.directory / "nats-auth.conf"

    def manifest(self) -> Path:
        return self.directory / "users.json"


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` readable by its owner only (0600), replacing it atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.chmod(tmp, 0o600)
    tmp.replace(path)


def init(
    directory: Path,
    subjects: Subjects,
    strategies: list[str],
    brokers: list[BrokerName],
    *,
    tls: bool = True,
    hosts: list[str] | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    ca_file: Path | None = None,
) -> SecuritySetup:
    """Write a NATS server config fragment (accounts, users, permissions, TLS) and the users'
    password files under ``directory``. ``cert_file``/``key_file``/``ca_file``: the user's own
    certificates instead of a generated development CA."""
    for strategy in strategies:
        if not strategy or any(c in strategy for c in ".*> \t"):
            raise OperatorError(f"strategy id {strategy!r}: one subject token (no dots, spaces or wildcards)")
    if not strategies:
        raise OperatorError("name at least one strategy (--strategy ID): each gets its own user")
    given = [p for p in (cert_file, key_file, ca_file) if p is not None]
    if given and len(given) != 3:
        raise OperatorError("give --cert, --key and --ca together (or none: a development CA is made)")
    for path in given:
        if not path.is_file():
            raise OperatorError(f"{path}: no such file")
    setup = SecuritySetup(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    users = []
    for role in roles(subjects, strategies, brokers):
        password = secrets.token_urlsafe(PASSWORD_BYTES)
        path = directory / "users" / f"{role.user}.password"
        write_private(path, password.encode())
        setup.users[role.user] = path
        users.append(
            f"    {{ user: {json.dumps(role.user)}, password: {json.dumps(password)}, "
            f"permissions: {permissions_block(role)} }}"
        )
    tls_block = ""
    if tls:
        if given:
            setup.cert_file, setup.key_file, setup.ca_file = cert_file, key_file, ca_file
        else:
            setup.ca_file, setup.cert_file, setup.key_file = _development_ca(directory / "tls", hosts or [])
        tls_block = (
            f"tls {{\n  cert_file: {json.dumps(str(setup.cert_file))}\n  key_file: {json.dumps(str(setup.key_file))}\n"
            f"  ca_file: {json.dumps(str(setup.ca_file))}\n}}\n"
        )
    config = (
        "# Written by `mbx security init`: include it from the server's config.\n"
        "accounts {\n  MBX {\n    jetstream: enabled\n    users: [\n"
        + "\n".join(users)
        + "\n    ]\n  }\n}\n"
        + tls_block
    )
    write_private(setup.server_config, config.encode())
    manifest = {
        "users": {user: str(path) for user, path in setup.users.items()},
        "inbox_prefixes": {r.user: r.inbox for r in roles(subjects, strategies, brokers)},
        "ca_file": str(setup.ca_file) if setup.ca_file else None,
        "cert_file": str(setup.cert_file) if setup.cert_file else None,
        "key_file": str(setup.key_file) if setup.key_file else None,
        "prefix": subjects.prefix,
    }
    write_private(setup.manifest(), json.dumps(manifest, indent=2).encode())
    return setup


def load(directory: Path) -> SecuritySetup:
    """What an earlier ``init`` wrote in ``directory``."""
    setup = SecuritySetup(directory)
    try:
        manifest = json.loads(setup.manifest().read_text())
    except (OSError, ValueError) as exc:
        raise OperatorError(f"{directory}: no security set-up there ({exc}); run `mbx security init`") from None
    setup.users = {user: Path(path) for user, path in manifest["users"].items()}
    for name in ("ca_file", "cert_file", "key_file"):
        if manifest.get(name):
            setattr(setup, name, Path(manifest[name]))
    return setup


def access(setup: SecuritySetup, user: str) -> dict[str, str]:
    """The environment a process needs to connect as ``user``."""
    if user not in setup.users:
        raise OperatorError(
            f"no NATS user {user!r} in {setup.directory} (a broker or strategy added since?); "
            "run `mbx security init` again"
        )
    env = {"MBX_NATS_USER": user, "MBX_NATS_PASSWORD_FILE": str(setup.users[user])}
    if setup.ca_file:
        env["MBX_NATS_CA_FILE"] = str(setup.ca_file)
    return env


def route_tls_block(setup: SecuritySetup) -> str:
    """TLS between the nodes of a cluster, with the same certificate, each verifying the other."""
    if not (setup.cert_file and setup.key_file and setup.ca_file):
        return ""
    cert, key, ca = (json.dumps(str(p)) for p in (setup.cert_file, setup.key_file, setup.ca_file))
    return f"  tls {{\n    cert_file: {cert}\n    key_file: {key}\n    ca_file: {ca}\n    verify: true\n  }}\n"


def _development_ca(directory: Path, hosts: list[str]) -> tuple[Path, Path, Path]:
    """A CA and a server certificate it signed, for 127.0.0.1, localhost and ``hosts``."""
    from cryptography import x509  # noqa: PLC0415  (only this command needs it)
    from cryptography.hazmat.primitives import hashes, serialization  # noqa: PLC0415
    from cryptography.hazmat.primitives.asymmetric import ec  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mbx development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mbx nats-server")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "server.pem", directory / "server-key.pem"
    write_private(ca_path, ca_cert.public_bytes(pem))
    write_private(cert_path, cert.public_bytes(pem))
    write_private(
        key_path,
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    os.chmod(ca_path, 0o644)  # the CA certificate is public: every client needs it
    return ca_path, cert_path, key_path
