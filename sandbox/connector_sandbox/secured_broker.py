"""A secured Apache Kafka broker, as the clusters users run: SASL_SSL (SCRAM-SHA-512 over TLS with a CA
made here) and mutual TLS listeners, StandardAuthorizer with `allow.everyone.if.no.acl.found=false`, and
topic auto-creation off. A PLAINTEXT listener whose ANONYMOUS principal is a super user serves the tests'
own set-up (topics, users, ACLs) only; clients under test use the secured listeners.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from connector_sandbox.kafka_broker import KafkaBroker, free_port


@dataclass(frozen=True)
class Tls:
    """PEM files: the CA, the broker's key and chain, and a client's certificate and key (mutual TLS)."""

    ca: Path
    server: Path
    client_cert: Path
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def make_tls(directory: Path, client: str = "mtls-client") -> Tls:
    """A CA, a broker certificate for 127.0.0.1 and localhost, and a client certificate, all signed here."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("activity-connector test CA"))
        .issuer_name(_name("activity-connector test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(common: str, san: list[x509.GeneralName] | None) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        pem_key = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return cert.public_bytes(serialization.Encoding.PEM), pem_key

    server_cert, server_key = leaf(
        "127.0.0.1", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    client_cert, client_key = leaf(client, None)
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    files = Tls(
        directory / "ca.pem", directory / "server.pem", directory / "client.pem", directory / "client.key"
    )
    files.ca.write_bytes(ca_pem)
    files.server.write_bytes(server_key + server_cert + ca_pem)  # Kafka's PEM keystore: key, then chain
    files.client_cert.write_bytes(client_cert)
    files.client_key.write_bytes(client_key)
    return files


class SecuredKafkaBroker(KafkaBroker):
    def __init__(self) -> None:
        super().__init__()
        self.sasl_port = self.mtls_port = 0
        self.tls: Tls | None = None
        self._admin: AdminClient | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.sasl_port}"

    @property
    def mtls_bootstrap(self) -> str:
        return f"127.0.0.1:{self.mtls_port}"

    @property
    def admin_bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _properties(self, controller: int) -> list[str]:
        assert self._dir is not None
        self.sasl_port, self.mtls_port = free_port(), free_port()
        self.tls = make_tls(self._dir)
        plain = [
            line
            for line in super()._properties(controller)
            if not line.startswith(
                ("listeners=", "advertised.listeners=", "inter.broker", "listener.security")
            )
            and line != "auto.create.topics.enable=true"
        ]
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
        return [
            *plain,
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},SASL_SSL://127.0.0.1:{self.sasl_port},"
            f"MTLS://127.0.0.1:{self.mtls_port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port},SASL_SSL://127.0.0.1:{self.sasl_port},"
            f"MTLS://127.0.0.1:{self.mtls_port}",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,MTLS:SSL",
            "auto.create.topics.enable=false",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            "super.users=User:ANONYMOUS",  # the PLAINTEXT listener (set-up) and the controller's
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={scram}",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.tls.server}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.tls.ca}",
            "listener.name.mtls.ssl.client.auth=required",
            "ssl.principal.mapping.rules=RULE:^CN=([a-zA-Z0-9.-]*).*$/$1/,DEFAULT",
        ]

    # --- what a test sets up ---------------------------------------------------------------------------

    def admin(self) -> AdminClient:
        """One admin client, kept: a client collected before its futures resolve fails them."""
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.admin_bootstrap, "log_level": 0})
        return self._admin

    def add_user(self, name: str, password: str) -> None:
        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
        upsert = UserScramCredentialUpsertion(name, info, password.encode())
        for future in self.admin().alter_user_scram_credentials([upsert]).values():
            future.result(timeout=30)

    def sasl_client(self, user: str, password: str) -> dict[str, Any]:
        """librdkafka properties for a client of the SASL_SSL listener."""
        assert self.tls is not None
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": password,
            "ssl.ca.location": str(self.tls.ca),
        }

    def mtls_client(self) -> dict[str, Any]:
        """librdkafka properties for a client of the mutual-TLS listener (principal User:mtls-client)."""
        assert self.tls is not None
        return {
            "bootstrap.servers": self.mtls_bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(self.tls.ca),
            "ssl.certificate.location": str(self.tls.client_cert),
            "ssl.key.location": str(self.tls.client_key),
        }

    def allow(self, principal: str, kind: str, name: str, *operations: str, prefixed: bool = False) -> None:
        """Grant `operations` (READ, WRITE, DESCRIBE, CREATE, ...) on a TOPIC, GROUP, TRANSACTIONAL_ID or
        CLUSTER resource to `principal` (User:alice)."""
        pattern = ResourcePatternType.PREFIXED if prefixed else ResourcePatternType.LITERAL
        bindings = [
            AclBinding(
                ResourceType[kind],
                name,
                pattern,
                principal,
                "*",
                AclOperation[operation],
                AclPermissionType.ALLOW,
            )
            for operation in operations
        ]
        for future in self.admin().create_acls(bindings).values():
            future.result(timeout=30)

    def deny(self, principal: str, kind: str, name: str, operation: str) -> None:
        """Remove an ACL granted with `allow`."""
        binding = AclBindingFilter(
            ResourceType[kind],
            name,
            ResourcePatternType.LITERAL,
            principal,
            "*",
            AclOperation[operation],
            AclPermissionType.ALLOW,
        )
        for future in self.admin().delete_acls([binding]).values():
            future.result(timeout=30)
