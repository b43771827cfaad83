"""Deployment files agree with each other and with the code."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_all(path):
    return [d for d in yaml.safe_load_all((ROOT / path).read_text()) if d]


def test_prometheus_rule_resource_carries_exactly_the_tested_rules():
    (resource,) = load_all("deploy/kubernetes/monitoring/prometheusrule.yaml")
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    assert resource["kind"] == "PrometheusRule" and resource["spec"] == rules


def test_service_monitor_scrapes_the_worker_service_port():
    (monitor,) = load_all("deploy/kubernetes/monitoring/servicemonitor.yaml")
    service = next(d for d in load_all("deploy/kubernetes/worker.yaml") if d["kind"] == "Service")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}


def test_worker_and_trainer_share_settings_and_the_registry_volume():
    worker = load_all("deploy/kubernetes/worker.yaml")
    config = next(d for d in worker if d["kind"] == "ConfigMap")["data"]
    deployment = next(d for d in worker if d["kind"] == "Deployment")
    cron = next(
        d for d in load_all("deploy/kubernetes/retrain-cronjob.yaml") if d["kind"] == "CronJob"
    )
    assert all(key.startswith("ANOMALY_") for key in config)
    pod = deployment["spec"]["template"]["spec"]
    job_pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    claim = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] + job_pod["volumes"]}
    assert claim == {"anomaly-models"}
    assert config["ANOMALY_MODEL_PATH"] in job_pod["containers"][0]["args"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > float(config.get("ANOMALY_SHUTDOWN_TIMEOUT_SECONDS", 20))


def test_compose_wires_kafka_worker_trainer_prometheus_grafana():
    compose = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "worker", "trainer", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert "models:/models" in services["worker"]["volumes"] == services["trainer"]["volumes"]
    assert services["trainer"]["command"][:2] == ["schedule", "--every"]
    base = ROOT / "deploy"
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            assert (base / volume.split(":")[0]).exists(), volume
    scrape = yaml.safe_load((base / "compose/prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["job_name"] == "anomaly-worker"  # what the rules select


def test_a_rejected_candidate_does_not_make_kubernetes_retrain_again():
    from training.commands import EXIT_REJECTED

    cronjob = next(
        d for d in load_all("deploy/kubernetes/retrain-cronjob.yaml") if d["kind"] == "CronJob"
    )
    job = cronjob["spec"]["jobTemplate"]["spec"]
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob"
    assert rule["onExitCodes"] == {
        "containerName": "retrain",
        "operator": "In",
        "values": [EXIT_REJECTED],
    }
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy needs it
    args = job["template"]["spec"]["containers"][0]["args"]
    assert "--keep" in args and "--last" in args and "--read-timeout" in args
