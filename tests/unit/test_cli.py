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
