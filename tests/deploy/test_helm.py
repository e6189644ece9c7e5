"""The Helm chart, checked by the real tools: `helm lint --strict` and `helm template` of every example,
the rendered manifests validated offline (kubernetes-validate for Kubernetes' kinds, the vendored CRD
schemas for PodMonitor, ServiceMonitor, PrometheusRule and ScaledObject), and the configuration the chart
renders accepted by `activity-connector check`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from connector.cli import main
from tests.integration.support import figure

CHART = Path(__file__).resolve().parents[2] / "helm" / "activity-connector"
EXAMPLES = sorted((CHART / "examples").glob("*.yaml"))
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject",
}
KUBERNETES = "1.33.0"


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    helm = shutil.which("helm")
    assert helm is not None, "helm is built by `make test` (make tools) into ~/.cache/activity-connector/bin"
    return subprocess.run([helm, *args], capture_output=True, text=True)


def _render(values: Path, *extra: str) -> list[dict[str, Any]]:
    rendered = _helm("template", "rel", str(CHART), "-f", str(values), *extra)
    assert rendered.returncode == 0, rendered.stderr
    return [d for d in yaml.safe_load_all(rendered.stdout) if d]


def _strict(schema: Any) -> Any:
    """No unknown fields anywhere (the generated schemas allow them)."""
    if isinstance(schema, dict):
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


@pytest.mark.parametrize("values", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_lint_template_and_validate_every_example(values: Path, tmp_path: Path) -> None:
    linted = _helm("lint", "--strict", str(CHART), "-f", str(values))
    assert linted.returncode == 0, linted.stdout + linted.stderr
    documents = _render(values)
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(documents))
    validate = Path(sys.executable).parent / "kubernetes-validate"
    checked = subprocess.run(
        [str(validate), "--strict", "-k", KUBERNETES, str(manifest)], capture_output=True, text=True
    )
    assert checked.returncode == 0 and "ERROR" not in checked.stdout, checked.stdout + checked.stderr
    for document in documents:
        key = (document["apiVersion"], document["kind"])
        if key[0].startswith(("monitoring.coreos.com", "keda.sh")):
            assert key in CRD_SCHEMAS, f"no schema to validate {key}"
            schema = json.loads(
                (Path(__file__).parent / "crd-schemas" / f"{CRD_SCHEMAS[key]}.json").read_text()
            )
            errors = list(jsonschema.Draft202012Validator(_strict(schema)).iter_errors(document))
            assert not errors, [f"{key[1]}: {e.json_path}: {e.message[:200]}" for e in errors]
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in documents)
    figure(f"\nhelm template {values.name}: {', '.join(kinds)}")


@pytest.mark.parametrize("values", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_the_rendered_configuration_passes_check(
    values: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    documents = _render(values, "--set", "staticMembership=true")
    (config_map,) = [d for d in documents if d["kind"] == "ConfigMap" and "connector.yaml" in d["data"]]
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for name in ("kafka-password", "rally-uxr-token", "rally-crm-key"):
        (secrets / name).write_text("canary-value\n")
    text = config_map["data"]["connector.yaml"].replace("/etc/activity-connector/secrets", str(secrets))
    (tmp_path / "connector.yaml").write_text(text)
    monkeypatch.setenv("POD_NAME", "rel-activity-connector-0")
    monkeypatch.setenv("RALLY_UXR_TOKEN", "canary-value")
    assert main(["check", "-c", str(tmp_path / "connector.yaml")]) == 0, capsys.readouterr().err
    effective = json.loads(capsys.readouterr().out)
    assert effective["kafka"]["group.instance.id"] == "rel-activity-connector-0"  # static membership
    assert effective["metrics"]["listen"] == "0.0.0.0:9464"


def test_the_pod_runs_as_the_issue_asks() -> None:
    documents = _render(CHART / "examples" / "production.yaml")
    by_kind = {d["kind"]: d for d in documents}
    pod = by_kind["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    config = yaml.safe_load(next(d for d in documents if d["kind"] == "ConfigMap")["data"]["connector.yaml"])
    assert pod["terminationGracePeriodSeconds"] > int(config["shutdown_timeout"].removesuffix("s"))
    assert "replicas" not in by_kind["Deployment"]["spec"]  # KEDA sets them
    assert by_kind["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert "group.instance.id" not in config["kafka"]  # off by default: rollouts rename pods
    triggers = by_kind["ScaledObject"]["spec"]["triggers"]  # one per topic of every sink, authenticated
    assert [t["metadata"]["consumerGroup"] for t in triggers] == [
        "activity-connector.uxr-activities",
        "activity-connector.crm-activities",
    ]
    assert all(t["authenticationRef"] == {"name": "kafka-sasl"} for t in triggers)
    assert by_kind["Service"]["spec"]["publishNotReadyAddresses"] is True
    rules = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    assert by_kind["PrometheusRule"]["spec"] == rules
    dashboard = next(d for d in documents if d["metadata"]["name"].endswith("-dashboard"))
    shipped = json.loads((CHART / "files" / "dashboard.json").read_text())
    rendered = json.loads(dashboard["data"]["rel-activity-connector.json"])
    assert rendered == {**shipped, "uid": "rel-activity-connector"}  # one dashboard per release


@pytest.mark.parametrize(
    "bad",
    ["keda.lagThreshold=many", "metrics.port=0", "image.pullPolicy=Sometimes", "secret.env[0].name=1BAD"],
)
def test_values_schema_refuses_bad_values(bad: str) -> None:
    linted = _helm("lint", str(CHART), "-f", str(CHART / "examples" / "minimal.yaml"), "--set", bad)
    assert linted.returncode != 0 and "values don't meet the specifications" in linted.stdout + linted.stderr


def test_secret_env_without_a_secret_name_is_refused_at_render() -> None:
    """It rendered secretKeyRef.name "", which the API server refuses only at install time."""
    rendered = _helm(
        "template", "rel", str(CHART), "-f", str(CHART / "examples" / "minimal.yaml"), "--set", "secret.name="
    )
    assert rendered.returncode != 0 and "secret.name is required when secret.env is set" in rendered.stderr
