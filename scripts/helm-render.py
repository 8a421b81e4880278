#!/usr/bin/env python3
"""Lint, schema-check and render the Helm chart offline with the Helm v4 SDK (PyPI
helm-python-sdk), since no helm CLI is available from our package registries.

    helm-render.py lint CHART [-f VALUES]...
    helm-render.py template CHART [-f VALUES]... [--name N] [--namespace NS] [--out FILE]
        [--split DIR] [--no-tests]
    helm-render.py schema-reject CHART -f VALUES...   # succeeds only if the schema rejects them
        (for the reason each `# expect: TEXT` line of the files names)
    helm-render.py deploy CHART OUT_DIR   # the plain manifests, rules and dashboard of deploy/
    helm-render.py extract-config RENDERED.yaml OUT_DIR   # the ConfigMap's TOML files
    helm-render.py shape RENDERED.yaml --expect single|ha   # the poller's shape for its backend
    helm-render.py scmb CHART [-f VALUES]... --bus-ports 5671,...   # message bus: TOML, mounts, egress

Values files merge left to right over the chart's values.yaml, as `helm -f a -f b` does.
Exit status: 0 ok, 1 a finding (lint error, render error, unexpected schema result).
"""
from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the TOML, the dashboard) as literal blocks, readable in deploy/."""


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    if "\n" in data:
        # Whitespace-only lines come from template indentation; they would force quoted style.
        data = "\n".join(line.rstrip() for line in data.split("\n"))
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_values(files: list[str]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for f in files:
        data = yaml.safe_load(Path(f).read_text()) or {}
        if not isinstance(data, dict):
            sys.exit(f"FAIL {f}: a values file must be a YAML mapping")
        merged = deep_merge(merged, data)
    return merged


def cmd_lint(a: argparse.Namespace) -> int:
    values = load_values(a.values)
    bad = 0
    for kube in ("v1.28.0", "v1.33.0"):
        report = helm.lint(a.chart, values, strict=True, kube_version=kube)
        for m in report.get("messages", []):
            sev = m.get("severity", 0)
            label = {1: "INFO", 2: "WARNING", 3: "ERROR"}.get(sev, "UNKNOWN")
            print(f"  lint {kube} {label} {m.get('path')}: {m.get('error')}")
            if sev >= 2:
                bad += 1
        for e in report.get("errors", []) or []:
            print(f"  lint {kube} ERROR {e}")
            bad += 1
    return 1 if bad else 0


def render(a: argparse.Namespace) -> dict[str, str]:
    values = load_values(a.values)
    with helm.Chart.load(a.chart) as chart:
        chart.validate_schema(values)
        return chart.render(values, name=a.name, namespace=a.namespace, is_install=True)


def cmd_template(a: argparse.Namespace) -> int:
    manifests = render(a)
    docs: list[str] = []
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")):
            continue
        if a.no_tests and "/templates/tests/" in path:
            continue
        for doc in yaml.safe_load_all(manifests[path]):
            if not doc:
                continue
            docs.append(f"# Source: {path}\n" + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=1000))
    text = "---\n".join(docs)
    if a.out:
        Path(a.out).write_text(text)
    elif not a.split:
        sys.stdout.write(text)
    if a.split:
        out = Path(a.split)
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("*.yaml"):
            old.unlink()
        for d in docs:
            obj = yaml.safe_load(d)
            name = f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
            (out / name).write_text(d)
    return 0


def expected_reasons(files: list[str]) -> list[str]:
    """`# expect: TEXT` lines of the values files: the rejection must name each TEXT, so that a
    file refused for another reason (an unknown key before the value existed) does not pass."""
    out = []
    for f in files:
        for line in Path(f).read_text().splitlines():
            if line.startswith("# expect:"):
                out.append(line.removeprefix("# expect:").strip())
    return out


def cmd_schema_reject(a: argparse.Namespace) -> int:
    values = load_values(a.values)
    with helm.Chart.load(a.chart) as chart:
        try:
            chart.validate_schema(values)
        except Exception as e:  # noqa: BLE001 - any rejection is the expected outcome
            why = " ".join(str(e).split()) or type(e).__name__
            missing = [r for r in expected_reasons(a.values) if r not in why]
            if missing:
                print(f"  rejected, but not for the expected reason {missing}: {why[:300]}")
                return 1
            print(f"  rejected as expected: {why[:300]}")
            return 0
    print(f"  NOT rejected: {' '.join(a.values)} passed the schema")
    return 1


KUSTOMIZATION_HEAD = """\
# Plain manifests for users without Helm: the chart rendered with its default values by
# `scripts/deploy-checks --update` (do not edit by hand; CI fails when they drift).
#   kubectl create namespace oneview-pagerduty-bridge
#   kubectl -n oneview-pagerduty-bridge create secret generic oneview-pagerduty-bridge \\
#     --from-file=oneview-password=./oneview-password --from-file=pagerduty-routing-key=./routing-key
#   kubectl apply -k deploy/
# Customise with an overlay (a kustomization that lists this directory as a resource and patches
# the ConfigMap's poller.toml, or sets BRIDGE_ONEVIEW__URL-style environment variables).
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: oneview-pagerduty-bridge
resources:
"""


def cmd_deploy(a: argparse.Namespace) -> int:
    out = Path(a.out_dir)
    base = argparse.Namespace(chart=a.chart, values=[], name="oneview-pagerduty-bridge",
                              namespace="oneview-pagerduty-bridge", out=None, no_tests=True,
                              split=str(out / "manifests"))
    cmd_template(base)
    names = sorted(p.name for p in (out / "manifests").glob("*.yaml"))
    (out / "kustomization.yaml").write_text(
        KUSTOMIZATION_HEAD + "".join(f"  - manifests/{n}\n" for n in names))
    # The alerting rules as a plain Prometheus rule file (promtool, compose, non-Operator users).
    rules_values = Path(out / ".rules-values.yaml")
    rules_values.write_text("metrics:\n  prometheusRule:\n    enabled: true\n")
    try:
        rendered = render(argparse.Namespace(chart=a.chart, values=[str(rules_values)],
                                             name="oneview-pagerduty-bridge",
                                             namespace="oneview-pagerduty-bridge"))
    finally:
        rules_values.unlink()
    rule = yaml.safe_load(rendered[f"{Path(a.chart).name}/templates/prometheusrule.yaml"])
    (out / "prometheus").mkdir(parents=True, exist_ok=True)
    (out / "prometheus" / "bridge-rules.yaml").write_text(
        "# Generated from the chart's PrometheusRule by scripts/deploy-checks --update; edit\n"
        "# helm/oneview-pagerduty-bridge/templates/_alerts.tpl instead.\n"
        + yaml.dump(rule["spec"], Dumper=_Dumper, sort_keys=False, width=1000))
    (out / "grafana").mkdir(parents=True, exist_ok=True)
    (out / "grafana" / "oneview-pagerduty-bridge.json").write_text(
        (Path(a.chart) / "files" / "dashboard.json").read_text())
    return 0


def cmd_extract_config(a: argparse.Namespace) -> int:
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    found = 0
    for doc in yaml.safe_load_all(Path(a.rendered).read_text()):
        if doc and doc.get("kind") == "ConfigMap" and doc["metadata"]["name"].endswith("pagerduty-bridge"):
            for key, text in doc.get("data", {}).items():
                (out / key).write_text(text)
                found += 1
    if not found:
        print(f"  no bridge ConfigMap in {a.rendered}")
    return 0 if found else 1


def _objs(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(Path(rendered).read_text()) if d]


def _one(objs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any] | None:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    return found[0] if found else None


def cmd_shape(a: argparse.Namespace) -> int:
    """The deployment shape the poller's state backend needs, on a rendered chart: `single`
    (file backend: one poller, Recreate, its PVC) or `ha` (postgres: N pollers, RollingUpdate,
    a PDB, anti-affinity, no volume, the lease env from the downward API, web replicas that
    find the leader in the database). Prints every finding; exit 1 on any."""
    objs = _objs(a.rendered)
    bad: list[str] = []

    def want(ok: bool, what: str) -> None:
        print(f"  {'ok ' if ok else 'BAD'} {what}")
        if not ok:
            bad.append(what)

    dep = _one(objs, "Deployment", "-poller")
    web = _one(objs, "Deployment", "-web")
    if not dep or not web:
        print("  no poller or web Deployment rendered")
        return 1
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    ctr = next(c for c in pod["containers"] if c["name"] == "bridge")
    env = {e["name"]: e for e in ctr.get("env", [])}
    env_order = [e["name"] for e in ctr.get("env", [])]
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    pvc = [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    pdb = _one(objs, "PodDisruptionBudget", "-poller")
    cm = _one(objs, "ConfigMap", "pagerduty-bridge")
    web_toml = cm["data"]["web.toml"] if cm else ""
    poller_toml = cm["data"]["poller.toml"] if cm else ""
    if a.expect == "single":
        want(spec.get("replicas") == 1, "poller replicas 1")
        want(spec["strategy"] == {"type": "Recreate"}, "poller strategy Recreate")
        want(len(pvc) == 1 and "persistentVolumeClaim" in vols.get("state", {}), "state on a PVC")
        want(pdb is None, "no poller PodDisruptionBudget")
        want(not any(n.startswith("BRIDGE_LEASE__") for n in env), "no lease env")
        want('poller_url = "http://' in web_toml, "web.toml names web.poller_url")
        want("[lease]" not in poller_toml and 'backend = "postgres"' not in poller_toml,
             "poller.toml has no [lease] and no postgres backend")
    else:
        n = spec.get("replicas", 0)
        want(n >= 2, f"poller replicas {n} >= 2")
        want(spec["strategy"] == {"type": "RollingUpdate",
                                  "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
             f"poller strategy RollingUpdate maxSurge 1 maxUnavailable 0: {spec['strategy']}")
        want(not pvc, "no PersistentVolumeClaim")
        want("state" not in vols, "no state volume on the poller")
        sel = spec["selector"]["matchLabels"]
        want(pdb is not None and pdb["spec"].get("maxUnavailable") == 1
             and pdb["spec"]["selector"]["matchLabels"] == sel,
             "poller PodDisruptionBudget maxUnavailable 1 selecting the pollers")
        anti = pod.get("affinity", {}).get("podAntiAffinity", {})
        terms = anti.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
            t["podAffinityTerm"] for t in anti.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
        want(any(t["topologyKey"] == "kubernetes.io/hostname"
                 and t["labelSelector"]["matchLabels"] == sel for t in terms),
             "poller anti-affinity across kubernetes.io/hostname")
        holder = env.get("BRIDGE_LEASE__HOLDER", {}).get("valueFrom", {}).get("fieldRef", {})
        want(holder.get("fieldPath") == "metadata.name", "BRIDGE_LEASE__HOLDER = the pod name")
        ip = env.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {})
        want(ip.get("fieldPath") == "status.podIP", "POD_IP = status.podIP")
        port = ctr["ports"][0]["containerPort"]
        adv = env.get("BRIDGE_LEASE__ADVERTISE_URL", {}).get("value")
        want(adv == f"http://$(POD_IP):{port}", f"BRIDGE_LEASE__ADVERTISE_URL {adv}")
        # $(VAR) expands only variables defined earlier in the list.
        want("POD_IP" in env_order and "BRIDGE_LEASE__ADVERTISE_URL" in env_order
             and env_order.index("POD_IP") < env_order.index("BRIDGE_LEASE__ADVERTISE_URL"),
             "POD_IP defined before BRIDGE_LEASE__ADVERTISE_URL")
        want("poller_url" not in web_toml, "web.toml has no web.poller_url")
        want('backend = "postgres"' in web_toml and "url_file = " in web_toml,
             "web.toml [state] backend postgres with url_file")
        want("[lease]" in poller_toml and "url_file = " in poller_toml and "\npath = " not in poller_toml,
             "poller.toml: [lease], state.url_file, no state.path")
        wpod = web["spec"]["template"]["spec"]
        items = [i["key"] for v in wpod.get("volumes", []) if v["name"] == "secrets"
                 for i in v["secret"].get("items", [])]
        want(not items or ("state-url" in items and "oneview-password" not in items),
             f"web Secret items: the state URL, never the OneView password: {items}")
        nps = {o["metadata"]["name"].rsplit("-", 1)[-1]: o for o in objs if o["kind"] == "NetworkPolicy"}
        if nps:
            for role in ("poller", "web"):
                ports = [p.get("port") for r in nps[role]["spec"].get("egress", []) for p in r.get("ports", [])]
                want(a.db_port in ports, f"{role} egress to the database port {a.db_port}")
            to_poller = [r for r in nps["web"]["spec"]["egress"]
                         if any(t.get("podSelector", {}).get("matchLabels") == sel for t in r.get("to", []))]
            want(bool(to_poller) and any(p.get("port") == port for r in to_poller for p in r["ports"]),
                 "web egress to the poller pods (pod selector) on the HTTP port")
    print(f"  {len(bad)} finding(s)")
    return 1 if bad else 0


def _bus_ports(toml: dict[str, Any]) -> set[int]:
    """The ports of every appliance whose message bus is on, as the bridge reads the TOML: an
    appliance's [appliances.scmb] keys override [scmb], whose defaults are off and 5671."""
    g = toml.get("scmb", {})
    on, port = g.get("enabled", False), g.get("port", 5671)
    apps = toml.get("appliances") or ([{}] if "oneview" in toml else [])
    return {a.get("scmb", {}).get("port", port) for a in apps if a.get("scmb", {}).get("enabled", on)}


def cmd_scmb(a: argparse.Namespace) -> int:
    """The message bus as rendered for VALUES: the poller's [scmb] / [appliances.scmb] turn on
    exactly --bus-ports (none: no [scmb] and no SCMB volume at all, so a release with the bus
    off renders what it did before); every PEM path in them is a file of a Secret or ConfigMap
    mounted into the poller (keys from Secrets only); the poller's egress to
    networkPolicy.oneviewCIDRs allows the REST port and each bus port over TCP, and nothing
    else opens a bus port (the web replicas never talk to appliances). Exit 1 on any finding."""
    values = deep_merge(yaml.safe_load((Path(a.chart) / "values.yaml").read_text()), load_values(a.values))
    rendered = render(argparse.Namespace(chart=a.chart, values=a.values, name="oneview-pagerduty-bridge",
                                         namespace="oneview-pagerduty-bridge"))
    objs = [d for path, text in rendered.items() if path.endswith((".yaml", ".yml"))
            for d in yaml.safe_load_all(text) if d]
    want_ports = {int(p) for p in a.bus_ports.split(",") if p.strip()}
    bad: list[str] = []

    def want(ok: bool, what: str) -> None:
        print(f"  {'ok ' if ok else 'BAD'} {what}")
        if not ok:
            bad.append(what)

    cm = _one(objs, "ConfigMap", "pagerduty-bridge")
    dep = _one(objs, "Deployment", "-poller")
    if not cm or not dep:
        print("  no bridge ConfigMap or poller Deployment rendered")
        return 1
    poller = tomllib.loads(cm["data"]["poller.toml"])
    web = cm["data"]["web.toml"]
    got = _bus_ports(poller)
    want(got == want_ports, f"poller.toml turns the bus on for ports {sorted(got)} (want {sorted(want_ports)})")
    want("scmb" not in web, "web.toml has no scmb (web replicas never connect to an appliance)")
    # A default PEM file nobody takes would still have to exist: the bridge checks every *_file.
    g = poller.get("scmb", {})
    apps = poller.get("appliances") or ([{}] if "oneview" in poller else [])
    for key in ("client_cert_file", "ca_file"):
        if key in g:
            takers = [x for x in apps if x.get("scmb", {}).get("enabled", g.get("enabled", False))
                      and key not in x.get("scmb", {})]
            want(bool(takers), f"[scmb].{key} is the default of {len(takers)} appliance(s) with the bus on")
    tables = [("scmb", poller["scmb"])] if "scmb" in poller else []
    tables += [(f"appliances.{x.get('name')}.scmb", x["scmb"]) for x in poller.get("appliances", []) if "scmb" in x]

    pod = dep["spec"]["template"]["spec"]
    ctr = next(c for c in pod["containers"] if c["name"] == "bridge")
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = ctr.get("volumeMounts", [])
    scmb_vols = sorted(n for n in vols if n.startswith("scmb"))
    if not want_ports:
        want(not tables, f"no [scmb] table while the bus is off: {[t for t, _ in tables]}")
        want(not scmb_vols, f"no SCMB volume while the bus is off: {scmb_vols}")
    for table, t in tables:
        for key in ("client_cert_file", "client_key_file", "ca_file"):
            if key not in t:
                continue
            path = Path(t[key])
            m = next((m for m in mounts if Path(m["mountPath"]) == path.parent), None)
            v = vols.get(m["name"], {}) if m else {}
            src = v.get("secret") or v.get("configMap")
            items = (src or {}).get("items")
            want(src is not None and m["name"] != "config" and (items is None or path.name in [i["path"] for i in items]),
                 f"{table}.{key} {path} is a key of the mounted volume {m['name'] if m else None}")
            if key == "client_key_file":
                want("secret" in v, f"{table}.client_key_file comes from a Secret, not a ConfigMap")

    nps = {o["metadata"]["name"].rsplit("-", 1)[-1]: o for o in objs if o["kind"] == "NetworkPolicy"}
    np = values["networkPolicy"]
    if not np.get("enabled"):
        print(f"  {len(bad)} finding(s) (networkPolicy.enabled false: no egress to check)")
        return 1 if bad else 0
    cidrs = sorted(np.get("oneviewCIDRs") or [])
    rest = int(np["oneviewPort"])

    def rule_cidrs(r: dict[str, Any]) -> list[str]:
        return sorted(t["ipBlock"]["cidr"] for t in r.get("to", []) if "ipBlock" in t)

    def rule_ports(r: dict[str, Any]) -> set[int]:
        return {p["port"] for p in r.get("ports", []) if p.get("protocol", "TCP") == "TCP"}

    egress = nps["poller"]["spec"].get("egress", [])
    to_ov = [r for r in egress if cidrs and rule_cidrs(r) == cidrs]
    if want_ports or cidrs:
        want(len(to_ov) == 1, f"one poller egress rule to networkPolicy.oneviewCIDRs {cidrs}")
    if to_ov:
        ports = rule_ports(to_ov[0])
        want(ports == {rest} | want_ports,
             f"poller egress to the appliances on TCP {sorted(ports)} (want REST {rest} + bus {sorted(want_ports)})")
    others = [r for r in egress if r not in to_ov] + nps["web"]["spec"].get("egress", [])
    stray = sorted({p for r in others for p in rule_ports(r)} & (want_ports - {rest}))
    want(not stray, f"no other egress rule opens a bus port: {stray}")
    print(f"  {len(bad)} finding(s)")
    return 1 if bad else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("lint", "template", "schema-reject"):
        s = sub.add_parser(name)
        s.add_argument("chart")
        s.add_argument("-f", "--values", action="append", default=[])
        if name == "template":
            s.add_argument("--name", default="oneview-pagerduty-bridge")
            s.add_argument("--namespace", default="oneview-pagerduty-bridge")
            s.add_argument("--out")
            s.add_argument("--split")
            s.add_argument("--no-tests", action="store_true")
    d = sub.add_parser("deploy")
    d.add_argument("chart")
    d.add_argument("out_dir")
    sh = sub.add_parser("shape")
    sh.add_argument("rendered")
    sh.add_argument("--expect", choices=["single", "ha"], required=True)
    sh.add_argument("--db-port", type=int, default=5432)
    sc = sub.add_parser("scmb")
    sc.add_argument("chart")
    sc.add_argument("-f", "--values", action="append", default=[])
    sc.add_argument("--bus-ports", required=True, help="comma-separated; empty: the bus is off everywhere")
    x = sub.add_parser("extract-config")
    x.add_argument("rendered")
    x.add_argument("out_dir")
    a = p.parse_args()
    try:
        return {"lint": cmd_lint, "template": cmd_template, "schema-reject": cmd_schema_reject,
                "deploy": cmd_deploy, "extract-config": cmd_extract_config,
                "shape": cmd_shape, "scmb": cmd_scmb}[a.cmd](a)
    except Exception as e:  # noqa: BLE001 - report any SDK error as a finding, not a traceback
        print(f"  {a.cmd} failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
