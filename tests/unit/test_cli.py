"""The command line's contract: exit 2 with the key named for bad configuration; secrets never printed."""

from pathlib import Path

import pytest

from connector.cli import main

GOOD = """
kafka: {bootstrap.servers: 127.0.0.1:9092}
sinks:
  - name: uxr
    topics: [a]
    destination:
      type: rally_uxr.activities
      url: https://api.rallyuxr.com/api/public/v1
      auth: {type: bearer, token: "${TOKEN}"}
"""


def test_check_prints_effective_config_with_secrets_redacted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", "very-secret-value")
    config = tmp_path / "c.yaml"
    config.write_text(GOOD)
    assert main(["check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    assert '"token": "***"' in out and "very-secret-value" not in out
    assert '"group_id": "activity-connector.uxr"' in out


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("topics: [a]", "topics: [a]\n    batch: {max_records: 5000}"), "max_records"),
        (GOOD.replace("rally_uxr.activities", "rally_uxr.activitiez"), "unknown destination"),
        (GOOD.replace("topics: [a]", "topics: [a]\n    colour: blue"), "sinks[0].colour: unknown key"),
        ("kafka: {}\nsinks: []", "kafka.bootstrap.servers: is required"),
        ("sinks: [", "not valid YAML"),
    ],
)
def test_bad_configuration_exits_2_naming_the_problem(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    text: str,
    message: str,
) -> None:
    monkeypatch.setenv("TOKEN", "t")
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert main(["check", "-c", str(config)]) == 2
    assert message in capsys.readouterr().err


def test_check_output_loads_back_as_a_configuration(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKEN", "very-secret-value")
    config = tmp_path / "c.yaml"
    config.write_text(GOOD.replace("topics: [a]", "topics: [a]\n    batch: {max_wait: 250ms}"))
    assert main(["check", "-c", str(config)]) == 0
    first = capsys.readouterr().out
    again = tmp_path / "again.yaml"
    again.write_text(first)
    assert main(["check", "-c", str(again)]) == 0
    assert capsys.readouterr().out == first  # the same effective configuration
    assert '"max_wait": 0.25' in first


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("  bootstrap.server: x", "kafka.bootstrap.server: No such configuration property"),
        ("  enable.auto.commit: true", "kafka.enable.auto.commit: set by the connector"),
        ("  fetch.max.bytes: 1000", "fetch.max.bytes"),
        ("  isolation.level: read_commited", "kafka.isolation.level: Invalid value"),
        ("  transactional.id: x", "kafka.transactional.id: set by the connector"),
        ("  statistics.interval.ms: 0", "kafka.statistics.interval.ms: must be above 0"),
    ],
)
def test_kafka_properties_are_checked_offline(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    extra: str,
    message: str,
) -> None:
    monkeypatch.setenv("TOKEN", "t")
    config = tmp_path / "c.yaml"
    config.write_text(
        GOOD.replace(
            "kafka: {bootstrap.servers: 127.0.0.1:9092}",
            f"kafka:\n  bootstrap.servers: 127.0.0.1:9092\n{extra}",
        )
    )
    assert main(["check", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.startswith("activity-connector ")
    with pytest.raises(SystemExit):
        main(["check", "--help"])
    out = capsys.readouterr().out
    assert "--connect" in out and "--log-level" in out and "loads back" in out


LEAKY = """
kafka:
  bootstrap.servers: 127.0.0.1:9092
  ssl.key.pem: "-----BEGIN PRIVATE KEY-----PEMSECRETMATERIAL"
sinks:
  - name: bulk
    topics: [a]
    destination:
      type: http.bulk
      url: https://user:URLPASS@api.example.com/x?api_key=QUERYSECRET
      headers: {Authorization: "Bearer HEADERSECRET", X-Api-Key: "${APIKEY}"}
      auth: {type: bearer, token: "${TOKEN}"}
"""


def test_check_masks_every_secret_wherever_it_stands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """It printed header values, ${VAR}s outside auth, a PEM key and URL credentials in clear."""
    monkeypatch.setenv("APIKEY", "ENVSECRET")
    monkeypatch.setenv("TOKEN", "TOKSECRET")
    config = tmp_path / "c.yaml"
    config.write_text(LEAKY)
    assert main(["check", "-c", str(config)]) == 0
    out = capsys.readouterr().out
    for secret in ("PEMSECRET", "URLPASS", "QUERYSECRET", "HEADERSECRET", "ENVSECRET", "TOKSECRET"):
        assert secret not in out
    assert '"type": "bearer"' in out and "api.example.com" in out  # what is not secret still shows


def test_two_sinks_of_one_group_with_one_static_id_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each would fence the other (FENCED_INSTANCE_ID is fatal) and both would exit."""
    monkeypatch.setenv("TOKEN", "t")
    second = (
        GOOD.split("sinks:\n")[1].replace("name: uxr", "name: uxr2").replace("topics: [a]", "topics: [b]")
    )
    text = GOOD.replace(
        "kafka: {bootstrap.servers: 127.0.0.1:9092}",
        "kafka: {bootstrap.servers: 127.0.0.1:9092, group.instance.id: pod-1}",
    )
    text = text.replace("topics: [a]", "topics: [a]\n    group_id: shared") + second.replace(
        "topics: [b]", "topics: [b]\n    group_id: shared"
    )
    config = tmp_path / "c.yaml"
    config.write_text(text)
    assert main(["check", "-c", str(config)]) == 2
    assert "sinks[1].group_id" in capsys.readouterr().err


def test_check_loads_the_registry_tls_files_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client key that is not the certificate's passed `check` (each file only had to exist) and failed
    at run time; `check` now loads them as the run does."""
    import subprocess

    for name in ("one", "two"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-days", "1", "-nodes", "-subj", "/CN=c",
             "-keyout", str(tmp_path / f"{name}.key"), "-out", str(tmp_path / f"{name}.pem")],
            check=True,
            capture_output=True,
        )  # fmt: skip
    monkeypatch.setenv("TOKEN", "t")
    config = tmp_path / "c.yaml"
    registry = (
        "    format: avro-confluent\n"
        "    schema_registry: {url: 'https://registry:8081', ssl.certificate.location: one.pem, "
        "ssl.key.location: KEY}\n"
    )
    config.write_text(GOOD.replace("topics: [a]\n", "topics: [a]\n" + registry.replace("KEY", "two.key")))
    assert main(["check", "-c", str(config)]) == 2
    assert "sinks[0].schema_registry" in capsys.readouterr().err
    config.write_text(GOOD.replace("topics: [a]\n", "topics: [a]\n" + registry.replace("KEY", "one.key")))
    assert main(["check", "-c", str(config)]) == 0


def test_check_refuses_a_proxy_the_run_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`check` never built the sink's HTTP client, so it passed what `run` refused at start."""
    monkeypatch.setenv("TOKEN", "t")
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    config = tmp_path / "c.yaml"
    config.write_text(GOOD)
    assert main(["check", "-c", str(config)]) == 0
    capsys.readouterr()
    monkeypatch.setenv("ALL_PROXY", "socks5://alice:s3cret@proxy:1080")
    assert main(["check", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert "sinks[0].destination.url" in err and "alice" not in err and "s3cret" not in err
