"""`herd-agent config check` and the loader: precise errors, exit 78, merge order, masking."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from herd_agent.cli import main
from herd_agent.config import load_config
from herd_agent.config.docs import render_markdown
from herd_agent.errors import ConfigError, ExitCode
from herd_agent.host.fsroot import HostRoot

REPO = Path(__file__).resolve().parents[2]


def write(root: Path, rel: str, text: str) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text))
    return p


def run_check(root: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(root), "config", "check", *args])
    out, err = capsys.readouterr()
    return int(exc.value.code), out, err


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "etc/herd-agent/config.yaml", "watch:\n  poll_interval_s: 1\n bad: [\n")
    code, out, err = run_check(tmp_path, capsys)
    assert code == ExitCode.CONFIG == 78
    assert out == ""
    line = err.strip().splitlines()[0]
    assert line.startswith(f"{f}:3:")
    assert "YAML syntax error" in line


def test_unknown_key_suggests_the_right_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "etc/herd-agent/config.yaml", "watch:\n  poll_intervall_s: 2\nleeve:\n  reserve_s: 10\n")
    code, _, err = run_check(tmp_path, capsys)
    assert code == 78
    lines = err.strip().splitlines()
    assert "watch.poll_intervall_s: unknown key; did you mean watch.poll_interval_s?" in lines
    assert any(line.startswith("leeve: unknown key; did you mean leave") for line in lines)


def test_wrong_type(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "etc/herd-agent/config.yaml", "leave:\n  eviction_parallelism: eight\n")
    code, _, err = run_check(tmp_path, capsys)
    assert code == 78
    assert err.strip() == 'leave.eviction_parallelism: must be an integer (got "eight")'


def test_out_of_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "etc/herd-agent/config.yaml", "imds:\n  token_ttl_s: 30000\n")
    code, _, err = run_check(tmp_path, capsys)
    assert code == 78
    assert err.strip() == "imds.token_ttl_s: must be between 60 and 21600 (got 30000)"


def test_choice_with_suggestion(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "etc/herd-agent/config.yaml", "etcd:\n  mode: embeded\n")
    code, _, err = run_check(tmp_path, capsys)
    assert code == 78
    assert err.strip() == 'etcd.mode: must be one of embedded, external; did you mean embedded? (got "embeded")'


def test_key_required_for_role(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "etc/herd-agent/config.yaml", "identity:\n  role: node\n")
    code, _, err = run_check(tmp_path, capsys)
    assert code == 78
    assert err.startswith("kube.kubeconfig: required for role node")
    assert "kube.token_ssm_parameter" in err and "(got null)" in err
    # The same file is fine for a control plane, and --role applies when the file names none.
    write(tmp_path, "etc/herd-agent/config.yaml", "cluster:\n  name: demo\n")
    assert run_check(tmp_path, capsys, "--role", "control-plane")[0] == 0
    assert run_check(tmp_path, capsys, "--role", "node")[0] == 78


def test_mutually_exclusive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "etc/herd-agent/config.yaml", "discovery:\n  addresses: [10.0.0.1]\n")
    write(tmp_path, "etc/herd-agent/config.d/50-ids.yaml", "discovery:\n  instance_ids: [i-0123456789abcdef0]\n")
    code, _, err = run_check(tmp_path, capsys)
    assert code == 78
    assert err.strip() == (
        "discovery.instance_ids: cannot be set together with discovery.addresses: name the control planes "
        'one way (got discovery.addresses=["10.0.0.1"], discovery.instance_ids=["i-0123456789abcdef0"])'
    )


def test_every_problem_is_reported_one_line_each(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "etc/herd-agent/config.yaml", "imds:\n  timeout_s: 0\n  attempts: true\nlog:\n  level: LOUD\n")
    code, _, err = run_check(tmp_path, capsys)
    assert code == 78
    assert sorted(err.strip().splitlines()) == [
        "imds.attempts: must be an integer (got true)",
        "imds.timeout_s: must be between 0.1 and 60 (got 0)",
        'log.level: must be one of DEBUG, INFO, WARNING, ERROR (got "LOUD")',
    ]


def test_duplicate_key_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(tmp_path, "etc/herd-agent/config.yaml", "watch:\n  poll_interval_s: 1\n  poll_interval_s: 2\n")
    code, _, err = run_check(tmp_path, capsys)
    assert code == 78
    assert err.startswith(f"{f}:3:3: YAML syntax error: duplicate key 'poll_interval_s'")


def test_valid_config_over_file_and_two_dropins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "etc/herd-agent/config.yaml", """\
        cluster:
          name: demo
        kernel:
          modules: [br_netfilter, overlay, ip_vs]
          sysctls:
            vm.max_map_count: "262144"
        notify:
          webhook_url: https://hooks.example.invalid/herd
          webhook_secret: s3cr3t-webhook-value
        watch:
          poll_interval_s: 2
        """)
    write(tmp_path, "etc/herd-agent/config.d/10-watch.yaml", "watch:\n  poll_interval_s: 0.5\n  on_rebalance: cordon\n")
    write(tmp_path, "etc/herd-agent/config.d/20-kernel.yaml", "kernel:\n  modules: [br_netfilter]\n")
    write(tmp_path, "etc/herd-agent/config.d/30-ignored.yml.disabled", "watch: {poll_interval_s: 9}\n")
    code, out, err = run_check(tmp_path, capsys)
    assert code == 0, err
    assert err == ""
    assert out.startswith("# sources: ")
    assert "10-watch.yaml" in out and "20-kernel.yaml" in out and "30-ignored" not in out
    doc = yaml.safe_load(out)
    assert doc["cluster"]["name"] == "demo"
    assert doc["watch"]["poll_interval_s"] == 0.5  # later drop-in wins
    assert doc["watch"]["on_rebalance"] == "cordon"
    assert doc["watch"]["on_maintenance"] == "cordon"  # default kept
    assert doc["kernel"]["modules"] == ["br_netfilter"]  # lists replace
    assert doc["kernel"]["sysctls"]["vm.max_map_count"] == "262144"  # mappings merge...
    assert doc["kernel"]["sysctls"]["net.ipv4.ip_forward"] == "1"  # ...over the defaults
    assert doc["notify"]["webhook_secret"] == "***"
    assert "s3cr3t-webhook-value" not in out


def test_no_files_means_defaults(tmp_path: Path) -> None:
    cfg = load_config(HostRoot(tmp_path))
    assert cfg.sources == []
    assert cfg.get("watch.poll_interval_s") == 1.0
    assert cfg.expand("token.name", cluster="blue") == "/herd/blue/token"
    with pytest.raises(KeyError):
        cfg.get("watch.nope")


def test_explicit_file_reads_its_own_dropins(tmp_path: Path) -> None:
    f = write(tmp_path, "elsewhere/agent.yaml", "cluster: {name: alpha}\n")
    write(tmp_path, "elsewhere/config.d/1.yaml", "cluster: {name: beta}\n")
    cfg = load_config(HostRoot(tmp_path / "root"), str(f))
    assert cfg.get("cluster.name") == "beta"


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    write(tmp_path, "etc/herd-agent/config.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError) as exc:
        load_config(HostRoot(tmp_path))
    assert exc.value.problems[0].endswith("the top level must be a mapping of sections (got list)")


def test_secret_value_is_masked_in_errors(tmp_path: Path) -> None:
    write(tmp_path, "etc/herd-agent/config.yaml", "notify:\n  webhook_secret: [hunter2-secret]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(HostRoot(tmp_path))
    assert exc.value.problems == ["notify.webhook_secret: must be a string (got ***)"]


def test_configuration_reference_is_generated_from_the_schema() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render_markdown(), (
        "docs/configuration.md drifted from the schema: run "
        "`.venv/bin/python -m herd_agent.config.docs > docs/configuration.md`"
    )


def test_help_is_useful(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--root" in out and "config" in out and "Exit codes" in out
    with pytest.raises(SystemExit):
        main(["config", "check", "--help"])
    out = capsys.readouterr().out
    assert "--file" in out and "--role" in out and "exit 78" in out and "config.d" in out


def test_external_etcd_is_tls_unless_plain_http_is_said_in_plain_words(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    # issue 13: external etcd runs TLS with client certificates by default; plain HTTP is the opt-out
    write(tmp_path, "etc/herd-agent/config.yaml", "etcd:\n  mode: external\n")
    code, out, err = run_check(tmp_path, capsys)
    assert code == 0
    assert "# etcd transport: TLS with client-certificate authentication on client and peer URLs" in out
    assert "unencrypted" not in out + err
    write(tmp_path, "etc/herd-agent/config.yaml", "etcd:\n  mode: external\n  insecure_plain_http: true\n")
    code, out, err = run_check(tmp_path, capsys)
    assert code == 0
    assert "# etcd transport: PLAIN HTTP: unencrypted and unauthenticated" in out
    assert err.rstrip().endswith("the etcd members are unencrypted and unauthenticated")
