"""deploy/: the files that put dropwatch on a fleet, checked with the tools
that consume them (no root, no kernel):

- systemd: `systemd-analyze verify` and `systemd-analyze security --offline`
  on the unit; its command line parses with dropwatch's own argument parser.
- container: the Dockerfile's structure (stages, sources, ignore file), its
  command line; the BPF and wheel stages replayed on this host (no container
  engine here to run `docker build`).
- Kubernetes: every object validated against the Kubernetes JSON schemas
  (kubernetes-validate, strict: unknown fields fail) for several versions,
  plus what the daemon needs (capabilities, mounts, probes, ports).
- Prometheus: `promtool check config`, `promtool check rules`, and
  `promtool test rules` (each alert fires on a synthetic series and stays
  quiet on a normal one); every metric the rules and the Grafana dashboard
  use is one dropwatch exports.
- The cardinality cap of /metrics (--metrics-max-labels) on a fake daemon.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import threading
import types
from datetime import datetime, timezone
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "dropwatch.service"
ENV_FILE = DEPLOY / "systemd" / "dropwatch.env"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "container" / "Dockerfile.dockerignore"
K8S = DEPLOY / "kubernetes" / "dropwatch.yaml"
PROM = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "dropwatch.json"

# What the daemon needs (README "Requirements" and the unit's comment).
NEEDED_CAPS = {"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYSLOG"}
# Kubernetes versions the manifest must validate against (schemas shipped by kubernetes-validate).
K8S_VERSIONS = ("1.28.0", "1.31.0")


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} missing: scripts/install-deps.sh installs Debian's {package} package")
    return path


def run(*cmd: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=cwd, timeout=300)


# ================================================================== systemd


def unit_entries(path: Path = UNIT) -> dict[str, list[str]]:
    """key -> values, in order (systemd allows repeated keys)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def exec_start_argv(env_overrides: dict[str, str] | None = None) -> list[str]:
    """ExecStart as systemd would run it with the shipped environment file:
    ${VAR} is one word, $VAR is split on whitespace."""
    entries = unit_entries()
    env: dict[str, str] = {}
    for value in entries.get("Environment", []):
        for word in shlex.split(value):
            k, _, v = word.partition("=")
            env[k] = v
    for line in ENV_FILE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            env[k.strip()] = shlex.split(v)[0] if v.strip() else ""
    env.update(env_overrides or {})
    argv: list[str] = []
    for word in shlex.split(entries["ExecStart"][0]):
        m = re.fullmatch(r"\$\{(\w+)\}|\$(\w+)", word)
        if m and m.group(1):
            argv.append(env[m.group(1)])
        elif m:
            argv.extend(env[m.group(2)].split())
        else:
            assert "$" not in word, f"ExecStart word {word!r} mixes text and a variable"
            argv.append(word)
    return argv


def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` passes with no warning at all. The unit runs
    /opt/dropwatch/bin/dropwatch, which verify requires to exist: the copy
    checked here points that one path at a stub executable, nothing else changes."""
    sa = tool("systemd-analyze", "systemd")
    text = UNIT.read_text()
    exe = exec_start_argv()[0]
    assert exe == "/opt/dropwatch/bin/dropwatch"
    stub = tmp_path / "opt" / "dropwatch" / "bin" / "dropwatch"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copy = tmp_path / "dropwatch.service"
    copy.write_text(text.replace(exe, str(stub)))
    assert copy.read_text().count(str(stub)) == text.count(exe) == 1
    p = run(sa, "verify", "--man=no", str(copy))
    assert p.returncode == 0 and not p.stdout.strip() and not p.stderr.strip(), p.stdout + p.stderr
    # And it does catch mistakes (so the check above means something).
    bad = tmp_path / "bad.service"
    bad.write_text(copy.read_text().replace("ProtectSystem=strict", "ProtectSystem=strict\nProtectSystm=full"))
    p = run(sa, "verify", "--man=no", str(bad))
    assert "Unknown key" in p.stderr and "ProtectSystm" in p.stderr, p.stderr
    # Security exposure as systemd rates it: at most 4.5 ("OK") on its 0-10 scale.
    p = run(sa, "security", "--offline=true", "--no-pager", "--threshold=45", str(copy))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr


def test_systemd_unit_is_hardened() -> None:
    e = unit_entries()
    caps = set(" ".join(e["CapabilityBoundingSet"]).split())
    assert caps == NEEDED_CAPS, f"capability bounding set {caps} != what the daemon needs {NEEDED_CAPS}"
    assert "AmbientCapabilities" not in e and "User" not in e  # root uid, capabilities bounded
    assert e["NoNewPrivileges"] == ["yes"]
    assert e["ProtectSystem"] == ["strict"]
    assert e["ProtectHome"] == ["yes"]
    assert e["PrivateTmp"] == ["yes"]
    assert e["StateDirectory"] == ["dropwatch"]
    assert e["Restart"] == ["on-failure"] and e["RestartSec"]
    assert e["RestrictNamespaces"] == ["net"]
    assert "PrivateNetwork" not in e  # must see the host's interfaces
    assert "ProtectKernelLogs" not in e  # would take CAP_SYSLOG away (kallsyms addresses)
    argv = exec_start_argv()
    db = argv[argv.index("--db") + 1]
    assert db.startswith("/var/lib/dropwatch/"), "the history must live in the StateDirectory (writable)"
    config = Path(argv[argv.index("--config") + 1])
    assert str(config.parent) in e["ReadWritePaths"], "PUT /labels rewrites the rules file: its directory is writable"
    assert e["ConfigurationDirectory"] == [config.parent.name]
    assert e["EnvironmentFile"] == ["-/etc/default/dropwatch"]


def test_systemd_command_line_parses_with_dropwatch() -> None:
    """The unit's ExecStart, expanded with the shipped environment file, is a
    valid `dropwatch run` command line (catches renamed or removed flags)."""
    from dropwatch.cli import build_parser

    argv = exec_start_argv()
    assert argv[1] == "run"
    args = build_parser().parse_args(argv[1:])
    assert args.iface == ["eth0"] and args.listen == "127.0.0.1:9180"
    assert args.config == "/etc/dropwatch/rules.yaml"
    # The documented fleet setting (beyond loopback with a token) parses too.
    argv = exec_start_argv({"DROPWATCH_LISTEN": "192.0.2.10:9180",
                            "DROPWATCH_OPTS": "--token-file /etc/dropwatch/token --metrics-max-labels 200"})
    args = build_parser().parse_args(argv[1:])
    assert args.token_file == "/etc/dropwatch/token" and args.metrics_max_labels == 200


# ================================================================== container image


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, rest = buf.partition(" ")
        out.append((op.upper(), rest.strip()))
        buf = ""
    assert not buf, "dangling line continuation"
    return out


def test_dockerfile_structure() -> None:
    ins = dockerfile_instructions()
    froms = [(i, rest) for i, (op, rest) in enumerate(ins) if op == "FROM"]
    assert len(froms) == 3, "multi-stage: bpf objects, wheel, runtime"
    stages = [rest.split(" AS ")[-1].strip() if " AS " in rest else None for _, rest in froms]
    assert stages[:2] == ["bpf", "wheel"] and stages[2] is None
    ignore = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    seen_stages: list[str] = []
    for op, rest in ins:
        if op == "FROM":
            if " AS " in rest:
                seen_stages.append(rest.split(" AS ")[-1].strip())
            continue
        if op != "COPY":
            continue
        words = rest.split()
        if words[0].startswith("--from="):
            assert words[0].split("=", 1)[1] in seen_stages, f"COPY {rest}: stage not defined before"
            continue
        for src in words[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the build context (repository root)"
            for pat in ignore:
                assert not fnmatch(src.rstrip("/"), pat), f"COPY {src} is excluded by {DOCKERIGNORE.name} ({pat})"
    # Final stage: Python, libbpf, no compiler.
    final = ins[froms[2][0]:]
    runs = " ".join(rest for op, rest in final if op == "RUN")
    assert "libbpf1" in runs and "python3" in runs
    assert "clang" not in runs and "libbpf-dev" not in runs and "gcc" not in runs
    bpf_stage = " ".join(rest for op, rest in ins[froms[0][0]:froms[1][0]] if op == "RUN")
    assert "clang" in bpf_stage and "make -C bpf OUT=/out" in bpf_stage
    # Exec form only, and the default command is a valid `dropwatch run`.
    entry = json.loads(next(rest for op, rest in final if op == "ENTRYPOINT"))
    cmd = json.loads(next(rest for op, rest in final if op == "CMD"))
    assert entry == ["dropwatch"] and cmd[0] == "run"
    from dropwatch.cli import build_parser

    args = build_parser().parse_args(cmd)
    assert args.db.startswith("/var/lib/dropwatch/")
    assert any(op == "VOLUME" and "/var/lib/dropwatch" in rest for op, rest in final)


def test_dockerfile_build_stages_replayed_on_host(tmp_path: Path) -> None:
    """No container engine here, so `docker build` cannot run. This replays
    what the first two stages do, with this host's tools (Debian 12, as the
    image's base): the BPF objects build into OUT=/out, and the package
    built from dropwatch/ with them carries both objects."""
    tool("clang", "clang")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "bpf", src / "bpf")
    out = tmp_path / "out"
    p = run("make", "-C", str(src / "bpf"), f"OUT={out}")
    assert p.returncode == 0, p.stdout + p.stderr
    objs = sorted(x.name for x in out.iterdir())
    assert objs == ["drop_reader.bpf.o", "labeler.bpf.o"]
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copytree(ROOT / "dropwatch", src / "dropwatch", ignore=shutil.ignore_patterns("__pycache__", "bpfobj"))
    shutil.copytree(out, src / "dropwatch" / "bpfobj")
    # The wheel stage builds with `python -m build` (fresh setuptools from
    # PyPI); here setuptools' build step, which decides the wheel's contents
    # (packages and package data), runs offline with the installed setuptools.
    lib = tmp_path / "lib"
    p = run(sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py", "--build-lib",
            str(lib), cwd=src)
    assert p.returncode == 0, p.stdout + p.stderr
    built = {str(x.relative_to(lib)) for x in lib.rglob("*") if x.is_file()}
    assert {"dropwatch/bpfobj/labeler.bpf.o", "dropwatch/bpfobj/drop_reader.bpf.o", "dropwatch/cli.py",
            "dropwatch/client_cli.py"} <= built, sorted(built)
    for name in ("labeler.bpf.o", "drop_reader.bpf.o"):
        data = (lib / "dropwatch" / "bpfobj" / name).read_bytes()
        assert data[:4] == b"\x7fELF" and b".BTF" in data, f"{name}: not an ELF object with BTF (CO-RE)"


# ================================================================== Kubernetes


def k8s_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def daemonset() -> dict[str, Any]:
    return next(d for d in k8s_docs() if d["kind"] == "DaemonSet")


def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate as kv
    except ImportError:
        pytest.fail("kubernetes-validate missing: it is in the test extra (pip install -e '.[test]')")
    return kv


@pytest.mark.parametrize("version", K8S_VERSIONS + ("latest",))
def test_kubernetes_manifests_validate_against_schemas(version: str) -> None:
    kv = kubernetes_validate()
    v = kv.latest_version() if version == "latest" else version
    kinds = []
    for doc in k8s_docs():
        kv.validate(doc, v, strict=True)  # raises ValidationError with the path of the bad field
        kinds.append(doc["kind"])
    assert sorted(kinds) == ["ConfigMap", "DaemonSet", "Namespace"]


def test_kubernetes_validation_catches_mistakes() -> None:
    kv = kubernetes_validate()
    ds = daemonset()
    ds["spec"]["template"]["spec"]["hostNetwrk"] = True  # typo
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, kv.latest_version(), strict=True)
    ds = daemonset()
    ds["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["periodSeconds"] = "10"
    with pytest.raises(kv.ValidationError):
        kv.validate(ds, kv.latest_version(), strict=True)


def test_kubernetes_daemonset_has_what_the_daemon_needs() -> None:
    from dropwatch.cli import build_parser
    from dropwatch.rules import parse_rules

    ds = daemonset()
    pod = ds["spec"]["template"]["spec"]
    meta = ds["spec"]["template"]["metadata"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"CAP_" + x for x in sc["capabilities"]["add"]} == NEEDED_CAPS
    assert sc["readOnlyRootFilesystem"] is True
    assert c["resources"]["limits"]["memory"] and c["resources"]["limits"]["cpu"] and c["resources"]["requests"]
    # The command line parses, listens on the port the probes and Prometheus use.
    args = build_parser().parse_args([a.replace("$(NODE_IP)", "192.0.2.10") for a in c["args"]])
    assert args.iface and args.token_file
    port = int(args.listen.rsplit(":", 1)[1])
    assert [p["containerPort"] for p in c["ports"]] == [port]
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz" and named.get(get["port"], get["port"]) == port, probe
    ann = meta["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port
    assert ann["prometheus.io/path"] == "/metrics"
    # Mounts: BTF read-only, history on the host, token and rules read-only.
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["/sys/kernel/btf"]["readOnly"] is True
    assert volumes[mounts["/sys/kernel/btf"]["name"]]["hostPath"]["path"] == "/sys/kernel/btf"
    db_dir = str(Path(args.db).parent)
    assert "hostPath" in volumes[mounts[db_dir]["name"]] and not mounts[db_dir].get("readOnly")
    token_dir = str(Path(args.token_file).parent)
    assert mounts[token_dir]["readOnly"] is True and "secret" in volumes[mounts[token_dir]["name"]]
    config_dir = str(Path(args.config).parent)
    cm_name = volumes[mounts[config_dir]["name"]]["configMap"]["name"]
    cm = next(d for d in k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == cm_name)
    rules = parse_rules(yaml.safe_load(cm["data"][Path(args.config).name]), source="configmap")
    assert rules.labels()
    # The namespace admits hostNetwork/hostPath pods.
    ns = next(d for d in k8s_docs() if d["kind"] == "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    assert ds["metadata"]["namespace"] == ns["metadata"]["name"]


# ================================================================== Prometheus


@pytest.fixture
def prom_dir(tmp_path: Path) -> Path:
    """deploy/prometheus as installed: plus the token file the configs reference."""
    d = tmp_path / "prometheus"
    shutil.copytree(PROM, d)
    (d / "dropwatch.token").write_text("0123456789abcdef0123456789abcdef\n")
    return d


def test_prometheus_config_passes_promtool(prom_dir: Path) -> None:
    promtool = tool("promtool", "prometheus")
    p = run(promtool, "check", "config", str(prom_dir / "prometheus.yml"))
    assert p.returncode == 0 and "FAILED" not in p.stdout + p.stderr, p.stdout + p.stderr
    assert "SUCCESS: 14 rules found" in p.stdout + p.stderr or "SUCCESS" in p.stdout + p.stderr
    # The example targets file is the file_sd format.
    for f in (prom_dir / "targets").glob("*.yml"):
        groups = yaml.safe_load(f.read_text())
        assert all(set(g) <= {"targets", "labels"} and all(":" in t for t in g["targets"]) for g in groups)


def test_kubernetes_scrape_config_passes_promtool(prom_dir: Path) -> None:
    """Debian builds Prometheus without Kubernetes service discovery, so its
    promtool rejects the kubernetes_sd_configs key itself. Then the same file
    is checked with that one block swapped for an equivalent static target
    list: everything else (relabel regexes, auth, rule files) is validated."""
    promtool = tool("promtool", "prometheus")
    cfg = prom_dir / "kubernetes-scrape.yml"
    p = run(promtool, "check", "config", str(cfg))
    out = p.stdout + p.stderr
    if p.returncode != 0 and "field kubernetes_sd_configs not found" in out:
        doc = yaml.safe_load(cfg.read_text())
        (job,) = doc["scrape_configs"]
        sd = job.pop("kubernetes_sd_configs")
        assert sd[0]["role"] == "pod"
        job["static_configs"] = [{"targets": ["192.0.2.10:9180"]}]
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        p = run(promtool, "check", "config", str(cfg))
        out = p.stdout + p.stderr
    assert p.returncode == 0 and "FAILED" not in out, out
    job = yaml.safe_load(cfg.read_text())["scrape_configs"][0]
    assert job["job_name"] == "dropwatch" and job["authorization"]["credentials_file"]


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = tool("promtool", "prometheus")
    p = run(promtool, "check", "rules", str(PROM / "dropwatch.rules.yml"))
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr
    p = run(promtool, "test", "rules", str(PROM / "dropwatch.rules.test.yml"))
    assert p.returncode == 0 and "SUCCESS" in p.stdout, p.stdout + p.stderr


def alert_rules() -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load((PROM / "dropwatch.rules.yml").read_text())
    return {r["alert"]: r for g in doc["groups"] for r in g["rules"] if "alert" in r}


def test_every_alert_has_a_firing_and_a_quiet_test() -> None:
    """Each alert of the issue (ratio per label, reason spike, daemon down or
    not attached, samples lost, corrupt records) and every other alert has a
    promtool case where it fires and one where it must stay quiet."""
    alerts = alert_rules()
    for required in ("DropwatchLabelDropRatioHigh", "DropwatchDropReasonSpike", "DropwatchDown",
                     "DropwatchNotAttached", "DropwatchSamplesLost", "DropwatchCorruptRecords"):
        assert required in alerts
    tests = yaml.safe_load((PROM / "dropwatch.rules.test.yml").read_text())["tests"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            # A firing case lists every alert expected at that time, so the
            # normal series next to the synthetic one are proven quiet too.
            (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    assert set(alerts) <= fires, f"alerts never shown to fire: {set(alerts) - fires}"
    assert set(alerts) <= quiet, f"alerts never shown quiet: {set(alerts) - quiet}"
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("info", "warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


# ---------------------------------------------------------------- metric names


def fake_daemon(drops: dict[tuple[str, str, str, str, str], int] | None = None,
                packets: dict[tuple[str, str, str], int] | None = None, max_labels: int | None = None,
                ) -> types.SimpleNamespace:
    """drops: (label, side, reason, pop, source) -> n; packets: (label, side, pop) -> n."""
    """What metrics.DropwatchCollector reads, without a kernel."""
    from dropwatch.collector import Totals

    totals = Totals()
    totals.drops.update(drops or {})
    totals.packets.update(packets or {})
    totals.bytes.update({k: 100 * v for k, v in (packets or {}).items()})
    totals.meta_failures["eth0"] = 0
    totals.stats.update({"samples": 0, "sample_rate_limited": 0, "sample_ring_full": 0})
    collector = types.SimpleNamespace(lock=threading.Lock(), totals=totals, poll_durations=[0.002], polls=1,
                                      last_poll=datetime.now(timezone.utc), store_error=None)
    att = types.SimpleNamespace(iface="eth0", mode="native")
    loader = types.SimpleNamespace(xdp={(None, "eth0"): att}, reader_prog_fd=3, reader_kind="tp_btf",
                                   prog_infos=lambda: {"labeler": types.SimpleNamespace(recursion_misses=0)})
    return types.SimpleNamespace(collector=collector, loader=loader,
                                 cfg=types.SimpleNamespace(metrics_max_labels=max_labels))


def exposition(daemon: types.SimpleNamespace) -> str:
    from prometheus_client import generate_latest

    from dropwatch.metrics import make_registry

    return generate_latest(make_registry(daemon)).decode()  # type: ignore[arg-type]


def exported_metric_names() -> set[str]:
    names = set()
    for line in exposition(fake_daemon({("a", "eyeball", "NO_SOCKET", "none", "metadata"): 1},
                                       {("a", "eyeball", "none"): 1})).splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            if kind in ("summary", "histogram"):
                names |= {name + "_sum", name + "_count"}
    return names


def metric_names_in(expr: str) -> set[str]:
    """Metric names in a PromQL expression (good enough for our rules:
    identifiers that are followed by a selector, a range or an operator and
    are not functions, keywords or label names)."""
    keywords = {"sum", "by", "without", "rate", "increase", "avg_over_time", "and", "or", "unless", "on",
                "offset", "topk", "count", "time", "vector", "changes", "max", "min", "avg", "ignoring",
                "group_left", "group_right", "bool"}
    expr = re.sub(r'"[^"]*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "{}", expr)
    expr = re.sub(r"\((?:[\w\s,]+)\)(?=\s*\()", "()", expr)  # by (a, b) lists
    return {m for m in re.findall(r"[a-zA-Z_:][\w:]*", expr) if m not in keywords and (
        m.startswith(("dropwatch_", "process_")) or m == "up" or ":" in m)}


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    exported = exported_metric_names()
    assert {"dropwatch_drops_total", "dropwatch_packets_total", "dropwatch_samples_dropped_total",
            "dropwatch_program_info", "process_start_time_seconds"} <= exported
    doc = yaml.safe_load((PROM / "dropwatch.rules.yml").read_text())
    recorded = {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}
    used: dict[str, set[str]] = {}
    for g in doc["groups"]:
        for r in g["rules"]:
            used[r.get("record") or r["alert"]] = metric_names_in(r["expr"])
    for expr in dashboard_exprs():
        used.setdefault("dashboard", set()).update(metric_names_in(expr))
    known = exported | recorded | {"up"}
    for where, names in used.items():
        assert names, f"{where}: no metric found (parser broken?)"
        assert names <= known, f"{where} uses metrics dropwatch does not export: {names - known}"
    # The dashboard uses the raw metrics only (works without the recording rules).
    assert not (used["dashboard"] & recorded)


# ================================================================== Grafana


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(d: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in d["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs() -> list[str]:
    d = dashboard()
    exprs = [t["expr"] for p in all_panels(d) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in d["annotations"]["list"] if "expr" in a]
    return exprs


GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$instance": ".+", "$label": ".+",
                "$pop": ".*"}


def grafana_to_promql(expr: str) -> str:
    for k, v in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(k, v)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def test_dashboard_is_well_formed_and_covers_the_views() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance", "label", "pop"} <= names
    panels = all_panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    # No two panels overlap on the 24-column grid.
    boxes = [(p["gridPos"]["x"], p["gridPos"]["y"], p["gridPos"]["w"], p["gridPos"]["h"], p["title"]) for p in panels]
    for i, a in enumerate(boxes):
        assert a[0] + a[2] <= 24
        for b in boxes[i + 1:]:
            overlap = a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]
            assert not overlap, f"panels overlap: {a[4]!r} and {b[4]!r}"
    for p in panels:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}", p["title"]
            assert p["targets"], p["title"]
    by_title = {p["title"]: p for p in panels}
    views = {"Drops/s by label": "by (label)", "Drop ratio by label": "by (label)",
             "Drops/s by reason": "by (reason)", "Drops/s by side": "by (side)", "Drops/s by host": "by (instance)",
             "Drops/s by PoP": "by (pop)", "Drops/s by attribution source": "by (source)"}
    for title, grouping in views.items():
        (target,) = by_title[title]["targets"]
        assert grouping in target["expr"] and "dropwatch_drops_total" in target["expr"], title
    assert "dropwatch_packets_total" in by_title["Drop ratio by label"]["targets"][0]["expr"]
    # The PoP selector applies to every drop and packet query; its "All" also
    # matches hosts whose dropwatch predates the pop label.
    (pop_var,) = [v for v in d["templating"]["list"] if v["name"] == "pop"]
    assert pop_var["allValue"] == ".*"
    for expr in dashboard_exprs():
        for m in re.findall(r"dropwatch_(?:drops|packets|packet_bytes)_total\{[^}]*\}", expr):
            assert 'pop=~"$pop"' in m, m


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every query (as recording rules), with Grafana's
    variables replaced by sample values."""
    promtool = tool("promtool", "prometheus")
    rules = [{"record": f"dashboard:q{i}", "expr": grafana_to_promql(e)} for i, e in enumerate(dashboard_exprs())]
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    p = run(promtool, "check", "rules", str(f))
    assert p.returncode == 0, p.stdout + p.stderr


# ================================================================== cardinality cap


# (label, side, reason, pop, source) -> drops
DROPS = {
    ("big", "eyeball", "NO_SOCKET", "ams01", "metadata"): 50,                          # 100
    ("big", "eyeball", "NO_SOCKET", "ams01", "flow"): 10,
    ("big", "origin", "NETFILTER_DROP", "none", "metadata"): 40,
    ("mid", "eyeball", "NO_SOCKET", "sjc02", "metadata"): 30,                          # 30
    ("tie_b", "eyeball", "NO_SOCKET", "none", "metadata"): 5,                          # 5 each
    ("tie_a", "origin", "NO_SOCKET", "ams01", "flow"): 5,
    ("unlabeled", "unknown", "NO_SOCKET", "unknown", "none"): 50,                      # 50
    ("small", "eyeball", "SOCKET_RCVBUFF", "none", "metadata"): 1,
}
# (label, side, pop) -> packets
PACKETS = {("big", "eyeball", "ams01"): 1000, ("big", "origin", "none"): 500, ("mid", "eyeball", "sjc02"): 300,
           ("tie_a", "origin", "ams01"): 20, ("tie_b", "eyeball", "none"): 10, ("small", "eyeball", "none"): 7,
           ("quiet", "eyeball", "none"): 999, ("unlabeled", "eyeball", "unknown"): 3}


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def by_label(series: dict[tuple[tuple[str, str], ...], float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, v in series.items():
        lb = dict(labels)["label"]
        out[lb] = out.get(lb, 0) + v
    return out


def test_drops_carry_pop_and_source_and_packets_carry_pop() -> None:
    text = exposition(fake_daemon(DROPS, PACKETS, None))
    for name, labels in (("dropwatch_drops_total", {"label", "side", "reason", "pop", "source"}),
                         ("dropwatch_packets_total", {"label", "side", "pop"}),
                         ("dropwatch_packet_bytes_total", {"label", "side", "pop"})):
        series = samples(text, name)
        assert series and all({k for k, _ in key} == labels for key in series), name
    drops = samples(text, "dropwatch_drops_total")
    assert drops[(("label", "big"), ("pop", "ams01"), ("reason", "NO_SOCKET"), ("side", "eyeball"),
                  ("source", "flow"))] == 10
    assert samples(text, "dropwatch_packets_total")[(("label", "unlabeled"), ("pop", "unknown"),
                                                     ("side", "eyeball"))] == 3


def test_no_cap_exports_every_label() -> None:
    text = exposition(fake_daemon(DROPS, PACKETS, None))
    drops = samples(text, "dropwatch_drops_total")
    assert len(drops) == len(DROPS)
    assert by_label(drops)["small"] == 1 and "other" not in by_label(drops)
    assert set(by_label(samples(text, "dropwatch_packets_total"))) == {k[0] for k in PACKETS}


@pytest.mark.parametrize("n, kept", [
    (1, {"big"}),
    (2, {"big", "unlabeled"}),                  # unlabeled competes like any label
    (3, {"big", "unlabeled", "mid"}),
    (4, {"big", "unlabeled", "mid", "tie_a"}),  # tie at 5 drops: by name
    (5, {"big", "unlabeled", "mid", "tie_a", "tie_b"}),
])
def test_cap_keeps_top_n_by_drops_and_folds_the_rest_exactly(n: int, kept: set[str]) -> None:
    text = exposition(fake_daemon(DROPS, PACKETS, n))
    drops = samples(text, "dropwatch_drops_total")
    packets = samples(text, "dropwatch_packets_total")
    bytes_ = samples(text, "dropwatch_packet_bytes_total")
    assert set(by_label(drops)) - {"other"} == kept
    assert set(by_label(packets)) - {"other"} <= kept
    # Every kept label keeps its exact series; the rest is summed into "other"
    # per side, reason, pop and source, so every sum over the series is unchanged.
    for label, side, reason, pop, source in DROPS:
        key = (("label", label if label in kept else "other"), ("pop", pop), ("reason", reason), ("side", side),
               ("source", source))
        assert key in drops
    for dim, values in (("side", ("eyeball", "origin", "unknown")),
                        ("reason", ("NO_SOCKET", "NETFILTER_DROP", "SOCKET_RCVBUFF")),
                        ("pop", ("ams01", "sjc02", "none", "unknown")), ("source", ("metadata", "flow", "none"))):
        i = ("label", "side", "reason", "pop", "source").index(dim)
        for value in values:
            want = sum(v for k, v in DROPS.items() if k[i] == value)
            got = sum(v for k, v in drops.items() if dict(k)[dim] == value)
            assert got == want, (dim, value)
    assert sum(drops.values()) == sum(DROPS.values())
    assert sum(packets.values()) == sum(PACKETS.values())
    assert sum(bytes_.values()) == 100 * sum(PACKETS.values())
    assert by_label(drops)["other"] == sum(v for k, v in DROPS.items() if k[0] not in kept)
    assert by_label(packets)["other"] == sum(v for k, v in PACKETS.items() if k[0] not in kept)
    # At most N label values plus "other".
    assert len(set(by_label(drops)) | set(by_label(packets))) <= n + 1


def test_cap_edge_cases() -> None:
    # A cap at or above the number of labels changes nothing (no "other").
    for n in (8, 100):
        text = exposition(fake_daemon(DROPS, PACKETS, n))
        assert "other" not in by_label(samples(text, "dropwatch_drops_total"))
        assert "other" not in by_label(samples(text, "dropwatch_packets_total"))
        assert samples(text, "dropwatch_drops_total") == samples(exposition(fake_daemon(DROPS, PACKETS)),
                                                                 "dropwatch_drops_total")
    # 0: everything is "other".
    text = exposition(fake_daemon(DROPS, PACKETS, 0))
    assert set(by_label(samples(text, "dropwatch_drops_total"))) == {"other"}
    assert by_label(samples(text, "dropwatch_drops_total"))["other"] == sum(DROPS.values())
    # A label really named "other" never takes a slot: it is part of the sum.
    drops = {**DROPS, ("other", "eyeball", "NO_SOCKET", "none", "metadata"): 1000}
    text = exposition(fake_daemon(drops, PACKETS, 1))
    got = by_label(samples(text, "dropwatch_drops_total"))
    assert set(got) == {"big", "other"} and got["other"] == sum(drops.values()) - 100
    # Only packets, no drops yet: ranked by name.
    text = exposition(fake_daemon({}, {("b", "eyeball", "none"): 5, ("a", "eyeball", "none"): 1,
                                       ("c", "origin", "ams01"): 9}, 1))
    assert by_label(samples(text, "dropwatch_packets_total")) == {"a": 1, "other": 14}
    # Nothing at all: no series, no "other".
    text = exposition(fake_daemon({}, {}, 3))
    assert samples(text, "dropwatch_drops_total") == {} and samples(text, "dropwatch_packets_total") == {}


def test_capped_exposition_passes_promtool_and_bounds_series() -> None:
    """1,000 labels x 2 sides x 3 reasons x 2 PoPs x 2 sources, capped at 20:
    the drops metric has at most (20 + 1) x 2 x 3 x 2 x 2 series and passes
    `promtool check metrics`."""
    promtool = tool("promtool", "prometheus")
    drops = {(f"cust{i:04d}", side, reason, pop, source): 1 + (i * 7919 + len(side) * 31 + len(reason)) % 97
             for i in range(1000) for side in ("eyeball", "origin") for reason in ("NO_SOCKET", "NETFILTER_DROP",
                                                                                  "SOCKET_RCVBUFF")
             for pop in ("ams01", "none") for source in ("metadata", "flow")}
    packets = {(f"cust{i:04d}", side, pop): 1000 for i in range(1000) for side in ("eyeball", "origin")
               for pop in ("ams01", "none")}
    text = exposition(fake_daemon(drops, packets, 20))
    series = samples(text, "dropwatch_drops_total")
    assert len(series) == 21 * 2 * 3 * 2 * 2
    assert sum(series.values()) == sum(drops.values())
    assert len(samples(text, "dropwatch_packets_total")) == 21 * 2 * 2
    per_label: dict[str, int] = {}
    for key, v in drops.items():
        per_label[key[0]] = per_label.get(key[0], 0) + v
    top = sorted(per_label, key=lambda lb: (-per_label[lb], lb))[:20]
    assert set(by_label(series)) == set(top) | {"other"}
    p = subprocess.run([promtool, "check", "metrics"], input=text, check=False, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_target_labels_do_not_collide_with_metric_labels() -> None:
    """A target label named like one of dropwatch's own metric labels (pop,
    source, label...) would rename the metric's to exported_<name>."""
    text = exposition(fake_daemon(DROPS, PACKETS, None))
    metric_labels = {k for name in ("dropwatch_drops_total", "dropwatch_packets_total")
                     for key in samples(text, name) for k, _ in key}
    assert {"pop", "source"} <= metric_labels
    for f in (PROM / "targets").glob("*.yml"):
        for entry in yaml.safe_load(f.read_text()):
            assert not set(entry.get("labels", {})) & metric_labels, f
