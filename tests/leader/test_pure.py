"""Pure parts of leader mode: DAG, release model, helm 3/4 flags, stuck decisions, readiness, values."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from herd_agent.errors import ConfigError
from herd_agent.leader import dag, readiness, releases, stuck
from herd_agent.leader.election import Epoch
from herd_agent.leader.fence import Deposed, Fence, label_value
from herd_agent.leader.helm import UpgradeArgs, classify, parse_version, upgrade_argv
from herd_agent.leader.records import Record
from herd_agent.leader.secrets import generated_values, values_files, values_hash


def rel(name: str, ns: str = "default", needs: tuple[str, ...] = ()) -> releases.Release:
    return releases.Release(name=name, namespace=ns, chart="/c", needs=needs)


# -- dag ---------------------------------------------------------------------------------------------


def test_dag_groups_by_depth_in_declared_order() -> None:
    rs = [rel("app", needs=("default/op",)), rel("crd"), rel("op", needs=("default/crd",)), rel("solo")]
    assert dag.order(rs) == [["default/crd", "default/solo"], ["default/op"], ["default/app"]]


def test_dag_unknown_need_and_cycle_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="needs default/db, which is not declared"):
        dag.order([rel("app", needs=("default/db",))])
    with pytest.raises(ConfigError, match="cycle: default/a -> default/b -> default/a"):
        dag.order([rel("a", needs=("default/b",)), rel("b", needs=("default/a",)), rel("c")])
    with pytest.raises(ConfigError, match="needs itself"):
        dag.order([rel("a", needs=("default/a",))])


def test_dependents_are_the_reverse_edges() -> None:
    assert dag.dependents([rel("a"), rel("b", needs=("default/a",))]) == {"default/a": ["default/b"], "default/b": []}


# -- release model -------------------------------------------------------------------------------------


def test_helmfile_fields_parse_with_defaults_and_namespace_relative_needs() -> None:
    rs = releases.parse({"repositories": [{"name": "argo", "url": "https://argoproj.github.io/argo-helm"}],
                         "releases": [{"name": "db", "namespace": "data", "chart": "oci://r/db", "version": "1.0"},
                                      {"name": "web", "namespace": "data", "chart": "argo/web", "needs": ["db"],
                                       "set": [{"name": "a.b", "value": 1}], "installed": False, "atomic": True}]})
    web = rs.by_id()["data/web"]
    assert web.needs == ("data/db",) and web.set == (("a.b", "1"),)
    assert (web.wait, web.timeout_s, web.create_namespace, web.installed, web.atomic) == (True, 300, True, False, True)
    assert rs.repositories[0].name == "argo"


@pytest.mark.parametrize(("doc", "message"), [
    ({"environments": {"prod": {}}}, "environments is not supported"),
    ({"releases": [{"name": "a", "chart": "/c", "values": [{"x": "{{ .Values.y }}"}]}]}, "Go templates"),
    ({"releases": [{"name": "a", "chart": "/c", "valus": []}]}, r"releases\[0\]\.valus: unknown"),
    ({"releases": [{"name": "A_b", "chart": "/c"}]}, "DNS-1123"),
    ({"releases": [{"name": "a", "chart": "/c"}, {"name": "a", "chart": "/d"}]}, "declared twice"),
    ({"releases": [{"name": "a", "chart": "/c", "timeout": "5m"}]}, "whole seconds"),
    ({"releases": [{"name": "a", "chart": "/c", "secrets": [{"name": "p", "ssm": "/x", "secretsManager": "y"}]}]},
     "secrets"),
    ({"manifests": [{"kind": "ConfigMap"}]}, "apiVersion, kind and metadata.name"),
    ({"releases": [{"name": "a", "chart": "/c", "valuesFiles": ["rel.yaml"]}]}, "absolute path"),
    ({"releases": [{"name": "a", "chart": "/c", "labels": {"x": "y"}}]}, r"labels: unknown"),
])
def test_bad_release_sets_name_the_key(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        releases.parse(doc)


def test_plain_yaml_helmfile_loads_and_templated_one_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "helmfile.yaml"
    f.write_text("releases:\n- name: a\n  chart: ./charts/a\n  valuesFiles: [v.yaml]\n")
    rs = releases.load({}, str(f))
    assert rs.releases[0].chart == str(tmp_path / "charts" / "a")
    assert rs.releases[0].values_files == (str(tmp_path / "v.yaml"),)
    f.write_text("releases:\n- name: a\n  chart: {{ env \"CHART\" }}\n")
    with pytest.raises(ConfigError, match="Go templates"):
        releases.load({}, str(f))
    with pytest.raises(ConfigError, match="not both"):
        releases.load({"releases": []}, str(f))


# -- helm flags ----------------------------------------------------------------------------------------

ARGS = UpgradeArgs("web", "apps", "repo/web", "1.2.3", ("/v/a.yaml",), {"herd.io/leader-epoch": "4"}, True, 120,
                   True, True)


def test_helm3_flags() -> None:
    assert upgrade_argv(ARGS, 3) == [
        "upgrade", "--install", "web", "repo/web", "--namespace", "apps", "--version", "1.2.3", "--values",
        "/v/a.yaml", "--labels", "herd.io/leader-epoch=4", "--create-namespace", "--timeout", "120s", "--wait",
        "--atomic"]


def test_helm4_flags() -> None:
    argv = upgrade_argv(ARGS, 4)
    assert argv[-2:] == ["--wait=watcher", "--rollback-on-failure"]
    assert "--atomic" not in argv and "--wait" not in argv
    no_wait = upgrade_argv(UpgradeArgs("w", "n", "/local", "9", (), {}, False, 60, False, False), 4)
    assert no_wait == ["upgrade", "--install", "w", "/local", "--namespace", "n", "--timeout", "60s"]


def test_helm_stderr_classes_and_versions() -> None:
    assert classify("Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress") \
        == "in-progress"
    assert classify("Error: release: not found") == "not-found"
    assert classify("Error: context deadline exceeded") == "timeout"
    assert classify("Error: boom") == "failed"
    assert parse_version("v3.17.2+gcc0bbbd") == (3, 17, 2)
    assert parse_version("v4.3.1") == (4, 3, 1)


# -- fence ---------------------------------------------------------------------------------------------


def test_fence_refuses_when_not_holding_or_too_little_term_left() -> None:
    holding = [True]
    left = [5.0]
    f = Fence(lambda: holding[0], lambda: Epoch("cp-1_ab", 3), lambda: left[0])
    assert f.check("w").transitions == 3
    assert f.labels(Epoch("cp-1_ab", 3)) == {"herd.io/leader-epoch": "3", "herd.io/leader": "cp-1_ab"}
    left[0] = 0.5
    with pytest.raises(Deposed):
        f.check("w")
    left[0], holding[0] = 5.0, False
    with pytest.raises(Deposed):
        f.check("w")
    assert (f.writes, f.refused) == (1, 2)
    assert label_value("ip-10-0-0-1.ec2.internal_3f") == "ip-10-0-0-1.ec2.internal_3f"
    assert label_value("host:a/b") == "host-a-b"
    assert label_value("x" * 80 + "_") == "x" * 63


# -- stuck ---------------------------------------------------------------------------------------------


def rec(revision: int, status: str, epoch: str | None = None, age_s: float = 0) -> Record:
    labels = {"herd.io/leader-epoch": epoch} if epoch else {}
    created = (datetime.now(UTC) - timedelta(seconds=age_s)).isoformat()
    return Record("web", "apps", revision, status, labels, created)


def test_stuck_decisions() -> None:
    assert stuck.decide([rec(1, "deployed")], 5, set()) is None
    r = stuck.decide([rec(1, "superseded"), rec(2, "deployed", "3"), rec(3, "pending-upgrade", "4")], 5, set())
    assert (r.action, r.revision) == ("rollback", 2)
    assert stuck.decide([rec(1, "pending-install", "4")], 5, set()).action == "uninstall"
    # our own epoch while our applier runs it: live, never touched
    assert stuck.decide([rec(1, "deployed"), rec(2, "pending-upgrade", "5")], 5, {"apps/web"}).action == "skip"
    # not started by a leader: only after the grace period
    assert stuck.decide([rec(1, "deployed"), rec(2, "pending-upgrade", None, 10)], 5, set()).action == "skip"
    assert stuck.decide([rec(1, "deployed"), rec(2, "pending-upgrade", None, 900)], 5, set()).action == "rollback"


# -- readiness -----------------------------------------------------------------------------------------


def test_readiness_rules() -> None:
    def lookup(api: str, kind: str, ns: str | None, name: str) -> dict | None:
        return objects.get((kind, name))

    meta = {"name": "x", "namespace": "n", "generation": 2}
    objects = {
        ("CustomResourceDefinition", "w.example.io"): {"kind": "CustomResourceDefinition", "metadata": {
            "name": "w.example.io"}, "status": {"conditions": [{"type": "Established", "status": "False"}]}},
        ("Deployment", "x"): {"kind": "Deployment", "metadata": meta, "spec": {"replicas": 2}, "status": {
            "observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 1}},
        ("ValidatingWebhookConfiguration", "hook"): {"kind": "ValidatingWebhookConfiguration", "metadata": {
            "name": "hook"}, "webhooks": [{"name": "v.example.io", "clientConfig": {"service": {
                "namespace": "n", "name": "svc"}}}]},
        ("APIService", "v1.m"): {"kind": "APIService", "metadata": {"name": "v1.m"},
                                 "status": {"conditions": [{"type": "Available", "status": "True"}]}},
    }
    manifest = "\n---\n".join(f"apiVersion: v1\nkind: {k}\nmetadata:\n  name: {n}" for k, n in objects)
    ok, reasons = readiness.release_ready(manifest, lookup, "n")
    assert not ok and len(reasons) == 3
    objects[("CustomResourceDefinition", "w.example.io")]["status"]["conditions"][0]["status"] = "True"
    objects[("Deployment", "x")]["status"]["availableReplicas"] = 2
    objects[("Endpoints", "svc")] = {"subsets": [{"addresses": [{"ip": "10.0.0.1"}]}]}
    assert readiness.release_ready(manifest, lookup, "n") == (True, [])
    objects[("Deployment", "x")]["status"]["observedGeneration"] = 1  # the controller has not seen the change
    assert not readiness.release_ready(manifest, lookup, "n")[0]


# -- values --------------------------------------------------------------------------------------------


def test_values_merge_secrets_into_a_0600_file_and_the_hash_follows_them(tmp_path: Path) -> None:
    r = releases.parse({"releases": [{"name": "a", "chart": "/c", "values": [{"x": {"y": 1}}],
                                      "set": [{"name": "x.z", "value": "2"}],
                                      "secrets": [{"name": "db.password", "ssm": "/p"}]}]}).releases[0]
    gen = generated_values(r, lambda ref: "s3cr3t-value")
    assert gen == {"x": {"y": 1, "z": "2"}, "db": {"password": "s3cr3t-value"}}
    with values_files(r, gen, tmp_path / "w") as files:
        mode = stat.S_IMODE(os.stat(files[-1]).st_mode)
        assert mode == 0o600 and stat.S_IMODE(os.stat(tmp_path / "w").st_mode) == 0o700
        assert "s3cr3t-value" in Path(files[-1]).read_text()
    assert not Path(files[-1]).exists()
    h1 = values_hash(r, gen, lambda p: b"")
    h2 = values_hash(r, generated_values(r, lambda ref: "rotated"), lambda p: b"")
    assert h1 != h2 and len(h1) == 40


def test_watchdog_health_follows_the_election_rounds_of_a_candidate() -> None:
    import time
    from types import SimpleNamespace

    from herd_agent.leader.service import LeaderService

    now = time.monotonic()
    candidate = SimpleNamespace(_beat=now - 3600, elector=SimpleNamespace(last_round=now - 2, lease_duration_s=15))
    assert LeaderService.healthy(candidate)  # type: ignore[arg-type]
    candidate.elector.last_round = now - 60  # no round for 60 s: the API call hangs
    assert not LeaderService.healthy(candidate)  # type: ignore[arg-type]
