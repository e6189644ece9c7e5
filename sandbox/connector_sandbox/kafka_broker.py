"""A real single-node Apache Kafka broker (KRaft) for tests, the demo and the benchmark, without Docker.

The broker's jars come from Maven Central (fetched once with Maven into a cache outside the repository);
the broker runs as a `java kafka.Kafka` child process on free loopback ports with a throwaway data
directory. If `KAFKA_BOOTSTRAP` is set, that broker is used instead and nothing is started.
"""

from __future__ import annotations

import atexit
import base64
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

KAFKA_VERSION = "4.4.0"
LOG4J_VERSION = "2.25.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.10.0"

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>activity-connector</groupId><artifactId>kafka-broker-runtime</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-api</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched or started; the message says why."""


def cache_dir() -> Path:
    base = os.environ.get("ACTIVITY_CONNECTOR_CACHE")
    root = Path(base) if base else Path.home() / ".cache" / "activity-connector"
    return root / f"kafka-{KAFKA_VERSION}"


def ensure_jars() -> Path:
    """The folder of the broker's jars, fetching them from Maven Central on first use."""
    home = cache_dir()
    lib = home / "lib"
    marker = lib / f"kafka_2.13-{KAFKA_VERSION}.jar"
    if marker.exists():
        return lib
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            raise BrokerError(f"`{tool}` is not on PATH; the local Kafka broker needs Java 17 and Maven")
    home.mkdir(parents=True, exist_ok=True)
    with (home / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes fetching at once would collide
        if marker.exists():
            return lib
        (home / "pom.xml").write_text(_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION))
        staging = home / "lib.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        done = subprocess.run(
            [
                "mvn",
                "-B",
                "-q",
                "-f",
                str(home / "pom.xml"),
                f"{DEPENDENCY_PLUGIN}:copy-dependencies",
                f"-DoutputDirectory={staging}",
                "-DincludeScope=runtime",
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0 or not (staging / marker.name).exists():
            tail = (done.stdout + done.stderr)[-2000:]
            raise BrokerError(f"fetching Kafka {KAFKA_VERSION} from Maven Central failed:\n{tail}")
        # Renamed whole, so an interrupted fetch never leaves a half-filled cache behind.
        staging.rename(lib)
    return lib


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM a child started in its own session, SIGKILL its group if it is not gone within 15 s."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def log_tail(path: Path, lines: int = 40) -> str:
    """The last lines of a child's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class KafkaBroker:
    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._java: list[str] = []
        self.port = 0

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_bootstrap(self) -> str:
        """Where the tests' own admin requests go (a super user's listener on a secured broker)."""
        return self.bootstrap

    def _properties(self, controller: int) -> list[str]:
        """The broker's server.properties (a PLAINTEXT listener, topics created on first use)."""
        assert self._dir is not None
        return [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller}",
            f"listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{controller}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
            "inter.broker.listener.name=PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={self._dir / 'data'}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "num.network.threads=2",
            "num.io.threads=2",
            "log.flush.interval.messages=9223372036854775807",
        ]

    def start(self, timeout: float = 90.0) -> None:
        lib = ensure_jars()
        self._dir = Path(tempfile.mkdtemp(prefix="activity-connector-kafka-"))
        self.port, controller = free_port(), free_port()
        props = self._dir / "server.properties"
        props.write_text("\n".join([*self._properties(controller), ""]))
        log4j = self._dir / "log4j2.properties"
        log4j.write_text(_LOG4J)
        java = ["java", f"-Dlog4j2.configurationFile=file:{log4j}", "-cp", f"{lib}/*"]
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        formatted = subprocess.run(
            [
                *java[:1],
                "-Xmx256m",
                *java[1:],
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id}",  # "=" form: a random id may start with "-"
                "-c",
                str(props),
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
        )
        if formatted.returncode != 0:
            raise BrokerError(
                f"formatting the broker's storage failed:\n{(formatted.stdout + formatted.stderr)[-2000:]}"
            )
        self._java = java
        atexit.register(self.stop)
        self._launch(timeout)

    def _launch(self, timeout: float) -> None:
        assert self._dir is not None
        java = self._java
        log = (self._dir / "broker.log").open("ab")
        self._process = subprocess.Popen(
            [
                *java[:1],
                "-Xms256m",
                "-Xmx768m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:+ExitOnOutOfMemoryError",
                "-Djava.awt.headless=true",
                *java[1:],
                "kafka.Kafka",
                str(self._dir / "server.properties"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready(timeout)

    def kill(self) -> None:
        """SIGKILL the broker, keeping its data directory and ports (fault injection)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)

    def restart(self, timeout: float = 90.0) -> None:
        """Start the broker again on the data it had, on the same ports."""
        if self._process is None:
            self._launch(timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        admin = AdminClient({"bootstrap.servers": self.admin_bootstrap, "log_level": 0})
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise BrokerError(f"the Kafka broker exited while starting:\n{self._log_tail()}")
            try:
                if admin.list_topics(timeout=2).brokers:
                    return
            except KafkaException:
                pass
            time.sleep(0.3)
        self.stop()
        raise BrokerError(f"the Kafka broker did not answer within {timeout:.0f}s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        return log_tail(self._dir / "broker.log") if self._dir is not None else ""

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> KafkaBroker:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def broker_from_env() -> tuple[str, KafkaBroker | None]:
    """`KAFKA_BOOTSTRAP` if set, else a freshly started local broker (which the caller stops)."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        return external, None
    broker = KafkaBroker()
    broker.start()
    return broker.bootstrap, broker


def create_topic(bootstrap: str, name: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    try:
        futures[name].result(30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def _probe(bootstrap: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """Each partition's end offset (the offset the next produced record will get)."""
    consumer = _probe(bootstrap, f"probe-{uuid.uuid4().hex[:8]}")
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in metadata.partitions
        }
    finally:
        consumer.close()


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """The group's committed offset per partition; -1 where it has committed nothing."""
    for attempt in range(20):
        consumer = _probe(bootstrap, group)
        try:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            committed = consumer.committed(
                [TopicPartition(topic, p) for p in metadata.partitions], timeout=10
            )
            return {tp.partition: tp.offset if tp.offset >= 0 else -1 for tp in committed}
        except KafkaException as exc:
            # A fresh broker answers NOT_COORDINATOR while its offsets topic loads: ask again.
            if not exc.args[0].retriable() or attempt == 19:
                raise
            time.sleep(0.5)
        finally:
            consumer.close()
    raise AssertionError("unreachable")
