"""Offline tests of charts/berth (run by `scripts/test-chart`).

For every values file in charts/berth/ci/: render with Helm's own engine (PyPI
`helm-python-sdk`, which embeds Helm's Go SDK: no helm binary, no network), `helm lint`,
validate every object (Kubernetes 1.32 schemas from `kubernetes-validate`, Berth's CRD
schemas, minimal schemas for the cert-manager and Prometheus Operator kinds), and check the
rendered containers against the binaries' source: every flag exists, every port and probe
equals what the binary listens on (flag, environment variable or its Rust default), every
file a flag names is mounted. Once: the CRD copies and the values table did not drift, every
value is documented. Then the mutation tests: a copy of the chart is broken in each way the
checks must notice, and each must fail.

Prints one line per check and `N passed, M failed` last; exits 1 if anything failed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

try:
    import helm_python  # noqa: F401
    import jsonschema  # noqa: F401
    import kubernetes_validate  # noqa: F401
    import yaml
except ImportError as e:
    print(
        f"scripts/test-chart: Python package {e.name} is missing; install them with\n"
        "  python3 -m venv .venv && .venv/bin/pip install -r scripts/ci-python-requirements.txt",
        file=sys.stderr,
    )
    sys.exit(1)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import chart_values_table  # noqa: E402

KUBE_VERSION = "1.32.0"
RELEASE, NAMESPACE = "berth", "berth-system"
CI_FILES = [
    "default-values.yaml",
    "layer2-values.yaml",
    "external-certs-values.yaml",
    "ipv6-values.yaml",
    "pvc-values.yaml",
    "cert-manager-values.yaml",
    "bgp-addpath-values.yaml",
    "bgp-self-values.yaml",
    "dual-stack-values.yaml",
]
BINARIES = {
    "berth-operator": ROOT / "operator",
    "berth-bgp-server": ROOT / "bgp-server",
    "berth-agent": ROOT / "agent",
}


class Problem(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# The binaries' flags, from their clap derive source.


def _balanced(text: str, start: int) -> int:
    """Index just past the parenthesis that closes the one at `start`."""
    depth = 0
    i = start
    in_str = False
    while i < len(text):
        c = text[i]
        if in_str:
            if c == "\\":
                i += 1
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("unbalanced parentheses")


def _const(crate: Path, expr: str) -> str:
    """The value of a Rust constant named by `expr` (e.g. routes::DEFAULT_TABLE)."""
    name = expr.split("::")[-1]
    for f in sorted((crate / "src").rglob("*.rs")):
        m = re.search(rf"const {re.escape(name)}\s*:\s*[^=]+=\s*([^;]+);", f.read_text())
        if m:
            return m.group(1).strip().replace("_", "")
    raise ValueError(f"constant {expr} not found in {crate}/src")


def clap_flags(crate: Path) -> dict[str, dict]:
    """`--flag` -> {field, env, default, bool} of the binary's `struct Args`."""
    text = (crate / "src" / "main.rs").read_text()
    start = text.index("struct Args {")
    body = text[start : text.index("\n}\n", start)]
    flags: dict[str, dict] = {}
    pos = 0
    while True:
        a = body.find("#[arg(", pos)
        if a < 0:
            break
        end = _balanced(body, a + 5)
        attr = body[a + 6 : end - 1]
        m = re.compile(r"\s*(?:///[^\n]*\n\s*|#\[[^\n]*\]\s*)*(\w+)\s*:\s*([^,\n]+),").match(body, end + 1)
        if not m:
            raise ValueError(f"{crate}: no field after #[arg({attr})]")
        field, ty = m.group(1), m.group(2).strip()
        pos = m.end()
        long = re.search(r'long\s*=\s*"([^"]+)"', attr)
        name = long.group(1) if long else field.replace("_", "-")
        if not re.search(r"\blong\b", attr):
            continue
        env = re.search(r'env\s*=\s*"([^"]+)"', attr)
        default = None
        d = re.search(r'default_value\s*=\s*"([^"]*)"', attr)
        dt = re.search(r"default_value_t\s*=\s*([^,\n]+?)\s*(?:,|$)", attr)
        if d:
            default = d.group(1)
        elif dt:
            v = dt.group(1).strip()
            if re.fullmatch(r"[0-9_]+", v):
                default = v.replace("_", "")
            elif re.fullmatch(r"[a-z_]+::[A-Z_0-9]+", v):  # module::CONSTANT
                default = _const(crate, v)
            # else an enum variant (e.g. LogFormat::Text): not a port, left unknown
        flags["--" + name] = {
            "field": field,
            "env": env.group(1) if env else None,
            "default": default,
            "bool": ty == "bool",
            # A value the binary cannot start without: no default, not optional, not a list.
            "required": default is None and ty != "bool" and not ty.startswith(("Option<", "Vec<")),
        }
    return flags


def served_paths(crate: Path) -> set[str]:
    """The HTTP paths the binary's metrics server answers (`"/healthz" =>` arms)."""
    text = (crate / "src" / "metrics.rs").read_text()
    return set(re.findall(r'"(/[a-z]+)"(?: if \w+)? =>', text))


def has_version_flag(crate: Path) -> bool:
    text = (crate / "src" / "main.rs").read_text()
    return re.search(r"#\[command\([^)]*\bversion\b", text) is not None


# ---------------------------------------------------------------------------------------------
# Rendering.


class UniqueKeyLoader(yaml.SafeLoader):
    pass


def _no_duplicates(loader, node, deep=False):
    seen = set()
    for k, _ in node.value:
        key = loader.construct_object(k, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", k.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(chart: Path, values: dict) -> list[dict]:
    import helm_python as helm

    with helm.Chart.load(str(chart)) as ch:
        manifests = ch.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        try:
            docs = list(yaml.load_all(text, Loader=UniqueKeyLoader))
        except yaml.YAMLError as e:
            raise Problem(f"{path}: not valid YAML: {e}") from None
        for d in docs:
            if d is None:
                continue
            if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
                raise Problem(f"{path}: a document without kind/apiVersion: {str(d)[:80]}")
            d["__source"] = path
            objects.append(d)
    return objects


def crd_objects(chart: Path) -> list[dict]:
    return [yaml.safe_load(p.read_text()) for p in sorted((chart / "crds").glob("*.yaml"))]


# ---------------------------------------------------------------------------------------------
# Schemas.


def _crd_to_jsonschema(s):
    """openAPIV3Schema -> JSON Schema: nullable, and unknown fields refused (the API server
    would prune them silently; here a typo must fail)."""
    if isinstance(s, list):
        return [_crd_to_jsonschema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {k: _crd_to_jsonschema(v) for k, v in s.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if s.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        s.get("type") == "object"
        and "properties" in s
        and "additionalProperties" not in s
        and not s.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if "format" in out and out["format"] not in ("date-time",):
        del out["format"]
    return out


_OBJ = {"type": "object"}
_STR = {"type": "string"}
_LABELSEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": {"type": "object"}, "matchExpressions": {"type": "array"}},
}
_NSSEL = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": _STR}},
}
_ENDPOINT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["port"],
    "properties": {k: _STR for k in ("port", "path", "interval", "scrapeTimeout", "scheme")},
}
_ISSUER_REF = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {"name": _STR, "kind": {"enum": ["Issuer", "ClusterIssuer"]}, "group": _STR},
}


def _top(spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": _STR, "kind": _STR, "metadata": _OBJ, "spec": spec},
        "additionalProperties": False,
    }


# Minimal schemas for the third-party kinds the chart can render, written from the upstream
# API references (cert-manager v1, Prometheus Operator v1) for the fields this chart uses:
# they catch typos and type errors in those fields, not every upstream rule.
THIRD_PARTY = {
    ("cert-manager.io/v1", "Issuer"): _top(
        {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "maxProperties": 1,
            "properties": {
                "selfSigned": _OBJ,
                "ca": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["secretName"],
                    "properties": {"secretName": _STR},
                },
            },
        }
    ),
    ("cert-manager.io/v1", "Certificate"): _top(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["secretName", "issuerRef"],
            "properties": {
                "secretName": _STR,
                "commonName": _STR,
                "dnsNames": {"type": "array", "items": _STR},
                "isCA": {"type": "boolean"},
                "duration": {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"},
                "renewBefore": {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$"},
                "usages": {
                    "type": "array",
                    "items": {
                        "enum": [
                            "signing", "digital signature", "content commitment", "key encipherment",
                            "key agreement", "data encipherment", "cert sign", "crl sign",
                            "encipher only", "decipher only", "any", "server auth", "client auth",
                            "code signing", "email protection", "s/mime", "ipsec end system",
                            "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing",
                            "microsoft sgc", "netscape sgc",
                        ]
                    },
                },
                "privateKey": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                    },
                },
                "issuerRef": _ISSUER_REF,
            },
        }
    ),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _top(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": _LABELSEL,
                "namespaceSelector": _NSSEL,
                "endpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        }
    ),
    ("monitoring.coreos.com/v1", "PrometheusRule"): _top(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name", "rules"],
                        "properties": {
                            "name": _STR,
                            "interval": _STR,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "properties": {
                                        "alert": _STR,
                                        "record": _STR,
                                        "expr": {"type": ["string", "integer"]},
                                        "for": {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
                                        "labels": {"type": "object", "additionalProperties": _STR},
                                        "annotations": {"type": "object", "additionalProperties": _STR},
                                    },
                                },
                            },
                        },
                    },
                }
            },
        }
    ),
    ("monitoring.coreos.com/v1", "PodMonitor"): _top(
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _LABELSEL,
                "namespaceSelector": _NSSEL,
                "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": _ENDPOINT},
            },
        }
    ),
}


_schema_cache: dict = {}


def _cached_schemas() -> None:
    """kubernetes-validate reads its large definitions file for every object: read it once."""
    import kubernetes_validate.utils as kv

    if getattr(kv.schema_contents, "_berth_cached", False):
        return
    original = kv.schema_contents

    def cached(filename, desired_version):
        key = (filename, desired_version)
        if key not in _schema_cache:
            _schema_cache[key] = original(filename, desired_version)
        return _schema_cache[key]

    cached._berth_cached = True
    kv.schema_contents = cached


def check_schemas(objects: list[dict], crds: list[dict]) -> list[str]:
    import jsonschema
    import kubernetes_validate

    _cached_schemas()

    ours = {}
    for crd in crds:
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for v in crd["spec"]["versions"]:
            ours[(f"{group}/{v['name']}", kind)] = (crd, _crd_to_jsonschema(v["schema"]["openAPIV3Schema"]))
    problems = []
    for o in objects:
        obj = {k: v for k, v in o.items() if k != "__source"}
        where = f"{o['__source']}: {o['kind']}/{o.get('metadata', {}).get('name')}"
        key = (o["apiVersion"], o["kind"])
        try:
            if key in ours:
                crd, schema = ours[key]
                body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
                jsonschema.validate(body, schema)
                if crd["spec"]["scope"] == "Cluster" and "namespace" in obj.get("metadata", {}):
                    problems.append(f"{where}: cluster-scoped, but has a namespace")
            elif key in THIRD_PARTY:
                jsonschema.validate(obj, THIRD_PARTY[key])
            else:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no schema for {key} (an unknown kind)")
        except (kubernetes_validate.ValidationError,) as e:
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{where}: {path}: {e.message}")
        except jsonschema.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path)
            problems.append(f"{where}: {path}: {e.message}")
    return problems


# ---------------------------------------------------------------------------------------------
# Containers against the binaries.


def _port_of(addr: str) -> int:
    m = re.search(r":(\d+)$", addr)
    if not m:
        raise Problem(f"{addr!r} has no :port")
    return int(m.group(1))


def _workloads(objects):
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            yield o, o["spec"]["template"]["spec"], o["spec"]["template"]["metadata"].get("labels", {})


def _arg_values(args: list[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for a in args:
        if a.startswith("--"):
            k, _, v = a.partition("=")
            out[k] = v if _ else None
    return out


def effective(flag: str, flags: dict, args: dict, env: dict):
    """What the binary sees for `flag`: the argument, else its environment variable (literal
    value only), else its Rust default."""
    if flag in args:
        return args[flag], "argument"
    e = flags[flag]["env"]
    if e and e in env:
        return env[e], f"env {e}"
    return flags[flag]["default"], "default"


def check_containers(objects: list[dict]) -> list[str]:
    problems = []
    speaker_grpc = []
    operator_dials = []
    speaker_pod_labels = []
    operator_selectors = []
    for w, spec, labels in _workloads(objects):
        vols = {v["name"]: v for v in spec.get("volumes", [])}
        for t in w["spec"].get("volumeClaimTemplates", []):
            vols[t["metadata"]["name"]] = {"persistentVolumeClaim": t}
        for c in spec["containers"]:
            where = f"{w['kind']}/{w['metadata']['name']} container {c['name']}"
            binary = Path((c.get("command") or [""])[0]).name
            if binary not in BINARIES:
                problems.append(f"{where}: command {c.get('command')} is not one of {sorted(BINARIES)}")
                continue
            crate = BINARIES[binary]
            flags = clap_flags(crate)
            args = _arg_values(c.get("args", []))
            env = {e["name"]: e.get("value") for e in c.get("env", []) if "value" in e}
            env_from = {e["name"] for e in c.get("env", [])}
            for a in args:
                if a not in flags:
                    problems.append(f"{where}: {binary} has no flag {a}")
                elif flags[a]["bool"] and args[a] is not None:
                    problems.append(f"{where}: {a} is a switch and takes no value")
                elif not flags[a]["bool"] and args[a] is None:
                    problems.append(f"{where}: {a} needs a value")
            for a in c.get("args", []):
                for ref in re.findall(r"\$\((\w+)\)", a):
                    if ref not in env_from:
                        problems.append(f"{where}: {a} uses $({ref}), which no env entry defines")
            for a, spec_ in flags.items():
                if spec_["required"] and a not in args and spec_["env"] not in env_from:
                    problems.append(f"{where}: {binary} needs {a} (or env {spec_['env']}), which the container does not give")
            ports = {p["name"]: p for p in c.get("ports", [])}

            def port_no(p):
                if isinstance(p, int):
                    return p
                return ports[p]["containerPort"] if p in ports else None

            # Metrics, health and readiness on the binary's metrics listener.
            mflag = next(f for f in flags if f.startswith("--metrics-"))
            maddr, how = effective(mflag, flags, args, env)
            mport = _port_of(maddr)
            if "metrics" not in ports or ports["metrics"]["containerPort"] != mport:
                problems.append(
                    f"{where}: containerPort 'metrics' is {ports.get('metrics', {}).get('containerPort')}, "
                    f"but {binary} listens on {mport} ({mflag} from {how})"
                )
            served = served_paths(crate)
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                p = c.get(probe)
                if not p or "httpGet" not in p:
                    problems.append(f"{where}: no httpGet {probe}")
                    continue
                got = port_no(p["httpGet"]["port"])
                if got != mport:
                    problems.append(f"{where}: {probe} port {p['httpGet']['port']} is {got}, {binary} serves on {mport}")
                if p["httpGet"].get("path") != path or path not in served:
                    problems.append(f"{where}: {probe} path {p['httpGet'].get('path')}, expected {path} (served: {sorted(served)})")
            # Files named by flags must be inside a mounted volume.
            mounts = [(m["mountPath"], m["name"]) for m in c.get("volumeMounts", [])]
            for a, v in args.items():
                if v and v.startswith("/") and not v.startswith("/usr/local/bin"):
                    hit = [(mp, n) for mp, n in mounts if v == mp or v.startswith(mp.rstrip("/") + "/")]
                    if not hit:
                        problems.append(f"{where}: {a}={v} is in no mounted volume")
                        continue
                    mp, name = max(hit, key=lambda h: len(h[0]))
                    vol = vols.get(name)
                    if vol is None:
                        problems.append(f"{where}: volumeMount {name} has no volume")
                    elif "secret" in vol and v != mp:
                        key = v[len(mp.rstrip("/")) + 1 :]
                        problems.append(_secret_key(objects, vol["secret"]["secretName"], key, where, a))
            if binary == "berth-bgp-server":
                if "--grpc-listen" in args:
                    gport = _port_of(args["--grpc-listen"])
                    if ports.get("grpc", {}).get("containerPort") != gport:
                        problems.append(f"{where}: containerPort 'grpc' is not --grpc-listen's port {gport}")
                    speaker_grpc.append(gport)
                else:
                    problems.append(f"{where}: no --grpc-listen: the operator cannot reach it")
                speaker_pod_labels.append(labels)
            if binary == "berth-operator":
                sp, how = effective("--speaker-port", flags, args, env)
                operator_dials.append((int(sp), how))
                sel, _ = effective("--speaker-selector", flags, args, env)
                operator_selectors.append(sel)
            if binary == "berth-agent" and "--gossip-listen" in args:
                gp = _port_of(args["--gossip-listen"])
                g = ports.get("gossip")
                if not g or g["containerPort"] != gp or g.get("protocol") != "UDP":
                    problems.append(f"{where}: containerPort 'gossip' is not UDP {gp} (--gossip-listen)")
    for port, how in operator_dials:
        for g in speaker_grpc:
            if port != g:
                problems.append(f"the operator dials the speakers on {port} (--speaker-port from {how}), they listen on {g}")
    for sel in operator_selectors:
        want = dict(kv.split("=", 1) for kv in sel.split(","))
        for labels in speaker_pod_labels:
            if any(labels.get(k) != v for k, v in want.items()):
                problems.append(f"the operator's --speaker-selector {sel} does not match the speaker Pods' labels {labels}")
    return [p for p in problems if p]


def _secret_key(objects, name, key, where, flag):
    for o in objects:
        if o["kind"] == "Secret" and o["metadata"]["name"] == name:
            if key not in (o.get("data") or {}) and key not in (o.get("stringData") or {}):
                return f"{where}: {flag} reads key {key!r}, which Secret {name} does not have"
            return None
    for o in objects:
        if o["kind"] == "Certificate" and o["spec"]["secretName"] == name:
            if key not in ("tls.crt", "tls.key", "ca.crt"):
                return f"{where}: {flag} reads key {key!r}, which cert-manager does not write"
            return None
    return None  # an existing Secret the admin provides


def check_services(objects: list[dict]) -> list[str]:
    """Every Service selects rendered Pods, by a port name they have; monitors select a
    Service / Pods with a `metrics` port."""
    problems = []
    pods = [(labels, spec) for _, spec, labels in _workloads(objects)]
    for s in (o for o in objects if o["kind"] == "Service"):
        sel = s["spec"].get("selector", {})
        matched = [spec for labels, spec in pods if all(labels.get(k) == v for k, v in sel.items())]
        if not matched:
            problems.append(f"Service {s['metadata']['name']}: selector {sel} matches no rendered Pod")
        for p in s["spec"]["ports"]:
            tp = p.get("targetPort", p["port"])
            for spec in matched:
                cports = [cp for c in spec["containers"] for cp in c.get("ports", [])]
                if not any(cp.get("name") == tp or cp["containerPort"] == tp for cp in cports):
                    problems.append(f"Service {s['metadata']['name']}: targetPort {tp} is no container port")
    for m in (o for o in objects if o["kind"] in ("ServiceMonitor", "PodMonitor")):
        sel = m["spec"]["selector"].get("matchLabels", {})
        if m["kind"] == "ServiceMonitor":
            svcs = [o for o in objects if o["kind"] == "Service" and all(o["metadata"]["labels"].get(k) == v for k, v in sel.items())]
            names = {p.get("name") for s in svcs for p in s["spec"]["ports"]}
            if not svcs or any(e["port"] not in names for e in m["spec"]["endpoints"]):
                problems.append(f"ServiceMonitor {m['metadata']['name']}: no selected Service has its ports")
        else:
            specs = [spec for labels, spec in pods if all(labels.get(k) == v for k, v in sel.items())]
            names = {cp.get("name") for spec in specs for c in spec["containers"] for cp in c.get("ports", [])}
            if not specs or any(e["port"] not in names for e in m["spec"]["podMetricsEndpoints"]):
                problems.append(f"PodMonitor {m['metadata']['name']}: no selected Pod has its ports")
    return problems


def check_rbac(objects: list[dict]) -> list[str]:
    """Least privilege, structurally: no wildcards, no cluster-wide Secrets, Secrets never
    read cluster-wide, the speaker without API access, every ServiceAccount used exists."""
    problems = []
    for o in objects:
        if o["kind"] in ("ClusterRole", "Role"):
            for r in o.get("rules", []):
                if "*" in r.get("verbs", []) or "*" in r.get("resources", []) or "*" in r.get("apiGroups", []):
                    problems.append(f"{o['kind']}/{o['metadata']['name']}: wildcard in {r}")
                if "secrets" in r.get("resources", []):
                    if o["kind"] == "ClusterRole":
                        problems.append(f"ClusterRole/{o['metadata']['name']}: Secrets cluster-wide")
                    if {"create", "update", "patch", "delete", "deletecollection"} & set(r["verbs"]):
                        problems.append(f"Role/{o['metadata']['name']}: writes Secrets")
                    # list/watch cannot be narrowed by resourceNames: it reads every Secret of
                    # the namespace (the chart's TLS keys and gossip key among them).
                    if {"list", "watch"} & set(r["verbs"]):
                        problems.append(f"Role/{o['metadata']['name']}: lists or watches every Secret of its namespace; get the named ones")
                if o["kind"] == "ClusterRole" and {"nodes/proxy", "pods/exec", "serviceaccounts/token"} & set(r.get("resources", [])):
                    problems.append(f"ClusterRole/{o['metadata']['name']}: {r}")
    sas = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    for w, spec, labels in _workloads(objects):
        sa = spec.get("serviceAccountName")
        if sa not in sas:
            problems.append(f"{w['kind']}/{w['metadata']['name']}: ServiceAccount {sa} is not rendered")
        if labels.get("app.kubernetes.io/name") == "berth-bgp-server":
            if spec.get("automountServiceAccountToken") is not False or sas.get(sa, {}).get("automountServiceAccountToken") is not False:
                problems.append("the speaker must not get an API token (automountServiceAccountToken: false)")
            for b in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
                if any(s.get("name") == sa for s in b.get("subjects", [])):
                    problems.append(f"the speaker's ServiceAccount is bound by {b['kind']}/{b['metadata']['name']}")
        caps = [c.get("securityContext", {}).get("capabilities", {}) for c in spec["containers"]]
        want = {"berth-bgp-server": {"NET_ADMIN", "NET_BIND_SERVICE"}, "berth-agent": {"NET_ADMIN", "NET_RAW"}, "berth-operator": set()}
        name = labels.get("app.kubernetes.io/name")
        for cap in caps:
            if cap.get("drop") != ["ALL"] or set(cap.get("add", [])) != want.get(name, set()):
                problems.append(f"{w['kind']}/{w['metadata']['name']}: capabilities {cap}, expected drop ALL, add {sorted(want.get(name, set()))}")
        for c in spec["containers"]:
            sc = c.get("securityContext", {})
            if sc.get("privileged") or sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{w['kind']}/{w['metadata']['name']}: privileged or privilege escalation allowed")
    return problems


def check_secret_names(chart: Path, values: dict, objects: list[dict]) -> list[str]:
    """The operator's Role reads Secrets with `get` only, limited to the names in
    operator.bgpPasswordSecrets when that list is not empty."""
    if not (_merged(chart, values).get("rbac") or {}).get("create", True):
        return []
    names = _merged(chart, values)["operator"].get("bgpPasswordSecrets") or []
    rules = [
        r
        for o in objects
        if o["kind"] == "Role" and o["metadata"]["name"].endswith("-operator")
        for r in o.get("rules", [])
        if "secrets" in r.get("resources", [])
    ]
    if len(rules) != 1:
        return [f"the operator's Role has {len(rules)} rules on Secrets, expected one (get)"]
    r = rules[0]
    problems = []
    if r.get("verbs") != ["get"]:
        problems.append(f"the operator's Role grants {r.get('verbs')} on Secrets, expected [get]")
    if (r.get("resourceNames") or []) != names:
        problems.append(f"the operator's Role names Secrets {r.get('resourceNames')}, operator.bgpPasswordSecrets says {names}")
    return problems


def registered_metrics() -> set[str]:
    """Metric names the binaries register (`registry.register("name", ...)` / `"name",` after
    a register call with a prefix), with the suffixes Prometheus adds."""
    names = set()
    for crate in BINARIES.values():
        # src/metrics.rs and modules' own (agent/src/membership/metrics.rs).
        for path in sorted((crate / "src").rglob("metrics.rs")):
            text = path.read_text()
            prefix = re.search(r'Registry::with_prefix\(\s*"([a-z_]+)"', text)
            for m in re.finditer(r'register(?:_with_unit)?\(\s*"([a-z0-9_]+)"', text):
                name = m.group(1)
                if prefix:
                    name = f"{prefix.group(1)}_{name}"
                names.add(name)
    out = set(names)
    for n in names:
        out |= {n + "_total", n + "_bucket", n + "_sum", n + "_count"}
    return out


def check_alert_metrics(objects: list[dict]) -> list[str]:
    """Every berth_* metric an alert reads is one a binary exports."""
    known = registered_metrics()
    problems = []
    for o in objects:
        if o["kind"] != "PrometheusRule":
            continue
        for g in o["spec"]["groups"]:
            for r in g["rules"]:
                for name in set(re.findall(r"\bberth_[a-z0-9_]+", str(r["expr"]))):
                    if name not in known:
                        problems.append(f"alert {r.get('alert')}: {name} is not exported by any binary")
    return problems


def _anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def check_alert_rules(objects: list[dict]) -> list[str]:
    """The alerts behave as charts/tests/alerts.yaml says on synthetic series (promtool), and
    each one's runbook_url names a heading of docs/operations.md."""
    rules = [o for o in objects if o["kind"] == "PrometheusRule"]
    if not rules:
        return ["no PrometheusRule rendered: enable metrics.prometheusRule in this values file"]
    problems = []
    ops = ROOT / "docs" / "operations.md"
    anchors = {_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", ops.read_text(), re.M)} if ops.exists() else set()
    alerts = [r for g in rules[0]["spec"]["groups"] for r in g["rules"] if "alert" in r]
    for r in alerts:
        url = r.get("annotations", {}).get("runbook_url", "")
        if "docs/operations.md#" not in url or url.rsplit("#", 1)[1] not in anchors:
            problems.append(f"alert {r['alert']}: runbook_url {url!r} names no heading of docs/operations.md")
    tests = ROOT / "charts" / "tests" / "alerts.yaml"
    tested = set(re.findall(r"alertname: (\w+)", tests.read_text()))
    for r in alerts:
        if r["alert"] not in tested:
            problems.append(f"alert {r['alert']}: no test in {tests.relative_to(ROOT)}")
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            return problems + ["promtool not found (apt-get install prometheus): CI must run the alert tests"]
        WARNINGS.append("alert rules not run through promtool: not installed (apt-get install prometheus)")
        return problems
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "rules.yaml").write_text(yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}))
        shutil.copy(tests, Path(tmp) / "alerts.yaml")
        for args in (["check", "rules", "rules.yaml"], ["test", "rules", "alerts.yaml"]):
            r = subprocess.run([promtool, *args], cwd=tmp, capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                problems.append(f"promtool {' '.join(args)}:\n{r.stdout}{r.stderr}")
    return problems


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every PromQL expression of a Grafana dashboard (panels, rows' panels, variables)."""
    out = []

    def walk(v):
        if isinstance(v, dict):
            for k, x in v.items():
                if k == "expr" and isinstance(x, str):
                    out.append(x)
                elif k == "query" and isinstance(x, dict) and isinstance(x.get("query"), str):
                    out.append(x["query"])
                else:
                    walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(dashboard)
    return out


def check_dashboard(chart: Path, objects: list[dict]) -> list[str]:
    """Every metric the dashboard reads is one a binary exports; the ConfigMap carries the
    dashboard file unchanged. (The lab test checks the same names against real scrapes.)"""
    known = registered_metrics()
    text = (chart / "dashboards" / "berth.json").read_text()
    problems = []
    try:
        dashboard = json.loads(text)
    except json.JSONDecodeError as e:
        return [f"dashboards/berth.json: {e}"]
    queries = dashboard_queries(dashboard)
    if not queries:
        problems.append("dashboards/berth.json: no queries found")
    for q in queries:
        for name in sorted(set(re.findall(r"\bberth_[a-z0-9_]+", q))):
            if name not in known:
                problems.append(f"dashboard query {q!r}: {name} is not exported by any binary")
    maps = [o for o in objects if o["kind"] == "ConfigMap" and "berth.json" in (o.get("data") or {})]
    if not maps:
        problems.append("no dashboard ConfigMap rendered: enable metrics.grafanaDashboard in this values file")
    elif json.loads(maps[0]["data"]["berth.json"]) != dashboard:
        problems.append("the dashboard ConfigMap differs from dashboards/berth.json")
    return problems


# The Kubernetes types the binaries use through kube::Api, and the resource each is.
API_TYPES = {
    "Service": ("", "services"),
    "Node": ("", "nodes"),
    "Namespace": ("", "namespaces"),
    "Pod": ("", "pods"),
    "Secret": ("", "secrets"),
    "ConfigMap": ("", "configmaps"),
    "EndpointSlice": ("discovery.k8s.io", "endpointslices"),
    "Lease": ("coordination.k8s.io", "leases"),
    "Eip": ("berth.dev", "eips"),
    "BgpConf": ("berth.dev", "bgpconfs"),
    "BgpPeer": ("berth.dev", "bgppeers"),
    "Recorder": ("events.k8s.io", "events"),
    # operator/src/controller/recorder.rs: events.k8s.io/v1 Event, imported under this name.
    "K8sEvent": ("events.k8s.io", "events"),
}
COMPONENT_CRATES = {"operator": ROOT / "operator", "agent": ROOT / "agent", "bgp-server": ROOT / "bgp-server"}


def api_uses(crate: Path) -> set[tuple[str, str]]:
    """The resources a crate's code reaches through kube::Api (and the Event Recorder);
    test files left out."""
    used = set()
    for f in (crate / "src").rglob("*.rs"):
        if f.name == "tests.rs":
            continue
        text = f.read_text()
        for t in re.findall(r"Api(?:::)?<(\w+)>", text):
            if t in API_TYPES:
                used.add(API_TYPES[t])
            elif t not in ("K",):
                raise Problem(f"{f}: Api<{t}>: add {t} to API_TYPES in scripts/chart_test.py")
        if "Recorder::new" in text:
            used.add(API_TYPES["Recorder"])
    return used


def granted(objects: list[dict], sa: str) -> set[tuple[str, str]]:
    roles = {(o["kind"], o["metadata"]["name"]): o for o in objects if o["kind"] in ("Role", "ClusterRole")}
    out = set()
    for b in (o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        if any(s.get("kind") == "ServiceAccount" and s.get("name") == sa for s in b.get("subjects", [])):
            role = roles.get((b["roleRef"]["kind"], b["roleRef"]["name"]))
            for r in (role or {}).get("rules", []):
                for g in r.get("apiGroups", []):
                    for res in r.get("resources", []):
                        out.add((g, res.split("/")[0]))
    return out


WARNINGS: list[str] = []


def check_rbac_covers_code(objects: list[dict]) -> list[str]:
    """Every resource a component's code uses is granted to its ServiceAccount (a missing one
    fails); a granted resource the code in this tree does not use is printed as a warning
    (the rules for the parallel agent/operator changes)."""
    problems = []
    for w, spec, labels in _workloads(objects):
        component = labels.get("app.kubernetes.io/component")
        crate = COMPONENT_CRATES.get(component)
        if crate is None:
            continue
        used = api_uses(crate)
        has = granted(objects, spec.get("serviceAccountName"))
        for g, res in sorted(used - has):
            problems.append(f"{component}: the code uses {g or 'core'}/{res}, the chart grants nothing on it")
        for g, res in sorted(has - used):
            w_ = f"{component}: granted {g or 'core'}/{res}, which the code in this tree does not use"
            if w_ not in WARNINGS:
                WARNINGS.append(w_)
    return problems


def _merged(chart: Path, values: dict) -> dict:
    def merge(a, b):
        out = dict(a)
        for k, v in b.items():
            out[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return out

    return merge(yaml.safe_load((chart / "values.yaml").read_text()), values)


def check_images(chart: Path, values: dict, objects: list[dict]) -> list[str]:
    """Every container runs the image the values name (registry, repository, tag or digest),
    with their pull policy and pull secrets."""
    v = _merged(chart, values)
    img = v["image"]
    repo = f"{img['registry']}/{img['repository']}" if img["registry"] else img["repository"]
    app_version = yaml.safe_load((chart / "Chart.yaml").read_text())["appVersion"]
    want = f"{repo}@{img['digest']}" if img["digest"] else f"{repo}:{img['tag'] or app_version}"
    problems = []
    for w, spec, _ in _workloads(objects):
        for c in spec.get("initContainers", []) + spec["containers"]:
            if c.get("image") != want or c.get("imagePullPolicy") != img["pullPolicy"]:
                problems.append(f"{w['kind']}/{w['metadata']['name']}: image {c.get('image')} ({c.get('imagePullPolicy')}), values say {want} ({img['pullPolicy']})")
        if (spec.get("imagePullSecrets") or []) != (v["imagePullSecrets"] or []):
            problems.append(f"{w['kind']}/{w['metadata']['name']}: imagePullSecrets {spec.get('imagePullSecrets')}, values say {v['imagePullSecrets']}")
    return problems


def check_no_webhooks(objects: list[dict]) -> list[str]:
    return [
        f"{o['__source']}: {o['kind']} {o['metadata']['name']}: no admission webhooks"
        for o in objects
        if o["kind"] in ("ValidatingWebhookConfiguration", "MutatingWebhookConfiguration", "ValidatingAdmissionPolicy")
    ]


def check_lint(chart: Path, values: dict) -> list[str]:
    import helm_python as helm

    report = helm.lint(str(chart), values, namespace=NAMESPACE, kube_version="v" + KUBE_VERSION, strict=True)
    problems = [f"{m['path']}: {m['error']}" for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    problems += list(report.get("errors") or [])
    return problems


# ---------------------------------------------------------------------------------------------
# Generated material: certificates that verify, kept across upgrades.


class FakeCluster:
    """Just enough of an API server for Helm's `lookup` (discovery and GET of one Secret),
    so an upgrade can be rendered against the Secrets of an earlier install."""

    def __init__(self):
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.secrets: dict[str, dict] = {}
        cluster = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                body = None
                if path == "/version":
                    body = {"major": "1", "minor": "32", "gitVersion": "v1.32.0", "platform": "linux/amd64"}
                elif path == "/api":
                    body = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
                elif path == "/apis":
                    body = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
                elif path == "/api/v1":
                    body = {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret", "verbs": ["get"]}]}
                elif path.startswith(f"/api/v1/namespaces/{NAMESPACE}/secrets/"):
                    body = cluster.secrets.get(path.rsplit("/", 1)[1])
                if body is None:
                    self.send_response(404)
                    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(json.dumps(body).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def render(self, chart: Path, values: dict) -> list[dict]:
        import helm_python as helm

        with helm.Config(kube_apiserver=self.url, namespace=NAMESPACE, storage_driver="memory") as cfg, helm.Chart.load(str(chart)) as ch:
            manifests = cfg.render(ch, values, name=RELEASE, namespace=NAMESPACE, is_upgrade=True)
        return [d for k, v in manifests.items() if not k.endswith("NOTES.txt") for d in yaml.safe_load_all(v) if d]

    def close(self):
        self.server.shutdown()


def _secrets(objects):
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}


def check_upgrade_keeps_secrets(chart: Path) -> list[str]:
    """An upgrade keeps the generated CA, certificates and gossip key (`lookup`); with one
    TLS Secret gone, both are made anew (a half-old pair would not verify)."""
    values = load_values(chart / "ci" / "default-values.yaml")
    cluster = FakeCluster()
    try:
        first = _secrets(cluster.render(chart, values))
        cluster.secrets = first
        again = _secrets(cluster.render(chart, values))
        problems = [f"Secret {n}: changed by an upgrade" for n in first if again.get(n, {}).get("data") != first[n]["data"]]
        fresh = _secrets(render(chart, values))
        problems += [f"Secret {n}: two installs made the same material" for n in first if fresh[n]["data"] == first[n]["data"]]
        tls = [n for n in first if n.endswith("-tls")]
        cluster.secrets = {n: s for n, s in first.items() if n != tls[0]}
        half = _secrets(cluster.render(chart, values))
        if any(half[n]["data"] == first[n]["data"] for n in tls):
            problems.append("with one TLS Secret missing, the other was kept: the pair must be made anew")
        return problems
    finally:
        cluster.close()


def check_generated_certificates(objects: list[dict], server_name: str) -> list[str]:
    """The generated server and client certificates verify against their CA (openssl), with
    the server name the operator checks and the right key usages."""
    import base64
    import subprocess

    if not shutil.which("openssl"):
        return ["openssl is missing: apt-get install -y openssl"]
    problems = []
    secrets = _secrets(objects)
    with tempfile.TemporaryDirectory() as tmp:
        for name, purpose in ((f"{RELEASE}-bgp-server-tls", "sslserver"), (f"{RELEASE}-operator-tls", "sslclient")):
            data = secrets[name]["data"]
            files = {}
            for k in ("tls.crt", "tls.key", "ca.crt"):
                files[k] = Path(tmp) / f"{name}-{k}"
                files[k].write_bytes(base64.b64decode(data[k]))
            args = ["openssl", "verify", "-purpose", purpose, "-CAfile", str(files["ca.crt"])]
            if purpose == "sslserver":
                args += ["-verify_hostname", server_name]
            r = subprocess.run(args + [str(files["tls.crt"])], capture_output=True, text=True)
            if r.returncode != 0:
                problems.append(f"{name}: {r.stdout.strip()} {r.stderr.strip()}")
            pub = [subprocess.run(["openssl", *c], capture_output=True, text=True).stdout
                   for c in (["x509", "-noout", "-pubkey", "-in", str(files["tls.crt"])], ["pkey", "-pubout", "-in", str(files["tls.key"])])]
            if not pub[0] or pub[0] != pub[1]:
                problems.append(f"{name}: tls.key is not the key of tls.crt")
    return problems


# ---------------------------------------------------------------------------------------------
# Chart-wide checks.


def check_crd_drift(chart: Path, crd_dir: Path = ROOT / "config" / "crd") -> list[str]:
    src = {p.name: p.read_bytes() for p in crd_dir.glob("*.yaml")}
    got = {p.name: p.read_bytes() for p in (chart / "crds").glob("*.yaml")}
    problems = [f"crds/{n} is missing (copy config/crd/{n})" for n in sorted(set(src) - set(got))]
    problems += [f"crds/{n} is not in config/crd/" for n in sorted(set(got) - set(src))]
    problems += [f"crds/{n} differs from config/crd/{n}: cp config/crd/*.yaml charts/berth/crds/" for n in sorted(set(src) & set(got)) if src[n] != got[n]]
    return problems


def check_values_documented(chart: Path) -> list[str]:
    return [f"values.yaml: {k} has no `# --` comment" for k in chart_values_table.undocumented(chart / "values.yaml")]


def check_values_table(chart: Path) -> list[str]:
    problems = []
    readme = (chart / "README.md").read_text()
    if chart_values_table.render_readme(readme, chart / "values.yaml") != readme:
        problems.append("README.md: the values table is out of date: run scripts/chart-values-table")
    schema = chart / "values.schema.json"
    if not schema.exists() or schema.read_text() != chart_values_table.schema_text(chart / "values.yaml"):
        problems.append("values.schema.json is out of date: run scripts/chart-values-table")
    return problems


def check_ci_files(chart: Path) -> list[str]:
    return [f"ci/{f} is missing" for f in CI_FILES if not (chart / "ci" / f).exists()]


def check_versions() -> list[str]:
    return [f"{b}: no #[command(version)]: --version will not work" for b, c in BINARIES.items() if not has_version_flag(c)]


# ---------------------------------------------------------------------------------------------
# Running.


class Run:
    def __init__(self, quiet: bool = False, select: str | None = None):
        self.passed = 0
        self.failed: list[str] = []
        self.quiet = quiet
        # Only checks whose names start with this (and renders, which the others need).
        self.select = select

    def check(self, name: str, fn: Callable[[], list[str]]) -> bool:
        if self.select and not name.startswith(self.select) and not name.endswith(": renders"):
            return True
        try:
            problems = [p for p in fn() if p]
        except Problem as e:
            problems = [str(e)]
        except Exception as e:  # a crash of a check is a failure, with its reason
            problems = [f"{type(e).__name__}: {e}".strip()]
            if not self.quiet:
                traceback.print_exc()
        if problems:
            self.failed.append(name)
            if not self.quiet:
                print(f"FAIL {name}")
                for p in problems[:20]:
                    print(f"     {p}")
        else:
            self.passed += 1
            if not self.quiet:
                print(f"ok   {name}")
        return not problems


def run_all(chart: Path, run: Run, only: list[str] | None = None) -> None:
    run.check("crds: charts/berth/crds equal config/crd", lambda: check_crd_drift(chart))
    run.check("crds: valid apiextensions.k8s.io/v1 objects (Kubernetes 1.32)",
              lambda: check_schemas([dict(c, __source=f"crds/{c['metadata']['name']}") for c in crd_objects(chart)], []))
    run.check("values: every value documented", lambda: check_values_documented(chart))
    run.check("values: README table and values.schema.json up to date", lambda: check_values_table(chart))
    run.check("ci: every values file present", lambda: check_ci_files(chart))
    run.check("binaries: every one has --version", check_versions)
    crds = crd_objects(chart)
    for f in only or sorted(p.name for p in (chart / "ci").glob("*.yaml")):
        values = load_values(chart / "ci" / f)
        state: dict = {}

        def do_render(values=values, state=state):
            state["objects"] = render(chart, values)
            return []

        if not run.check(f"{f}: renders", do_render):
            continue
        objs = state["objects"]
        run.check(f"{f}: helm lint", lambda values=values: check_lint(chart, values))
        run.check(f"{f}: schemas (Kubernetes {KUBE_VERSION}, CRDs, third-party)", lambda objs=objs: check_schemas(objs, crds))
        run.check(f"{f}: flags, ports, probes, mounts match the binaries", lambda objs=objs: check_containers(objs))
        run.check(f"{f}: Services and monitors find their ports", lambda objs=objs: check_services(objs))
        run.check(f"{f}: images and pull secrets from the values", lambda objs=objs, values=values: check_images(chart, values, objs))
        run.check(f"{f}: RBAC and security contexts", lambda objs=objs: check_rbac(objs))
        run.check(f"{f}: operator Secrets narrowed to operator.bgpPasswordSecrets", lambda objs=objs, values=values: check_secret_names(chart, values, objs))
        if (values.get("rbac") or {}).get("create", True):
            run.check(f"{f}: RBAC grants every resource the code uses", lambda objs=objs: check_rbac_covers_code(objs))
        run.check(f"{f}: no admission webhooks", lambda objs=objs: check_no_webhooks(objs))
        run.check(f"{f}: alerts read metrics the binaries export", lambda objs=objs: check_alert_metrics(objs))
        if ((values.get("metrics") or {}).get("grafanaDashboard") or {}).get("enabled"):
            run.check(f"{f}: dashboard reads metrics the binaries export", lambda objs=objs: check_dashboard(chart, objs))
        if ((values.get("metrics") or {}).get("prometheusRule") or {}).get("enabled"):
            run.check(f"{f}: alerts pass their promtool tests and link their runbooks", lambda objs=objs: check_alert_rules(objs))
        merged = values.get("tls", {})
        if merged.get("mode", "generate") == "generate":
            server_name = merged.get("serverName", "berth-bgp-server")
            run.check(f"{f}: generated certificates verify (openssl)",
                      lambda objs=objs, server_name=server_name: check_generated_certificates(objs, server_name))
    if not only or "default-values.yaml" in only:
        run.check("upgrade keeps the generated Secrets (lookup against a fake API server)", lambda: check_upgrade_keeps_secrets(chart))


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if old not in text:
        raise Problem(f"mutation: {old!r} not in {path}")
    path.write_text(text.replace(old, new, 1))


# Each mutation breaks a copy of the chart one way; the named check must fail on it.
MUTATIONS = [
    ("a broken template", "default-values.yaml: renders",
     lambda c: _edit(c / "templates/agent/daemonset.yaml", "{{ $v.metricsPort }}", "{{ $v.metricsPort.nope }}")),
    ("an unclosed action", "default-values.yaml: renders",
     lambda c: _edit(c / "templates/operator/deployment.yaml", "{{ .Values.operator.replicas }}", "{{ .Values.operator.replicas ")),
    ("an unknown field in a Pod spec", "default-values.yaml: schemas",
     lambda c: _edit(c / "templates/agent/daemonset.yaml", "hostNetwork: true", "hostNetwork: true\n      hostNetwrok: true")),
    ("a wrong type (replicas a string)", "default-values.yaml: schemas",
     lambda c: _edit(c / "values.yaml", "replicas: 2\n  # -- Port of the operator", "replicas: two\n  # -- Port of the operator")),
    ("an Eip the CRD schema refuses", "layer2-values.yaml: schemas",
     lambda c: _edit(c / "ci/layer2-values.yaml", "protocol: layer2", "protocol: ospf")),
    ("a cert-manager Certificate typo", "cert-manager-values.yaml: schemas",
     lambda c: _edit(c / "templates/tls.yaml", "dnsNames: [", "dnsName: [")),
    ("a probe on the wrong port", "default-values.yaml: flags, ports",
     lambda c: _edit(c / "templates/operator/deployment.yaml", "httpGet: {path: /readyz, port: metrics}", "httpGet: {path: /readyz, port: 8080}")),
    ("a probe on a path the binary does not serve", "default-values.yaml: flags, ports",
     lambda c: _edit(c / "templates/agent/daemonset.yaml", "path: /healthz", "path: /health")),
    ("a metrics port value the flag does not carry", "pvc-values.yaml: flags, ports",
     lambda c: _edit(c / "templates/operator/deployment.yaml", "- --metrics-address=", "- --log-json\n            # --metrics-address=")),
    ("the speaker's gRPC port differs from the operator's", "default-values.yaml: flags, ports",
     lambda c: _edit(c / "templates/operator/deployment.yaml", "--speaker-port={{ .Values.bgpServer.grpcPort }}", "--speaker-port=50052")),
    ("a flag the binary does not have", "default-values.yaml: flags, ports",
     lambda c: _edit(c / "templates/bgp-server/statefulset.yaml", "- --state-dir=", "- --state-directory=")),
    ("a TLS file outside any mount", "default-values.yaml: flags, ports",
     lambda c: _edit(c / "templates/operator/deployment.yaml", "--speaker-ca=/etc/berth/tls/ca.crt", "--speaker-ca=/etc/berth/ca.crt")),
    ("a Service targetPort no container has", "default-values.yaml: Services",
     lambda c: _edit(c / "templates/agent/daemonset.yaml", "targetPort: metrics", "targetPort: prometheus")),
    ("Secrets readable cluster-wide", "default-values.yaml: RBAC",
     lambda c: _edit(c / "templates/agent/rbac.yaml", "resources: [services]", "resources: [services, secrets]")),
    ("Secrets listed by the operator", "default-values.yaml: RBAC",
     lambda c: _edit(c / "templates/operator/rbac.yaml", "verbs: [get]\n", "verbs: [get, list, watch]\n")),
    ("operator.bgpPasswordSecrets not applied", "external-certs-values.yaml: operator Secrets narrowed",
     lambda c: _edit(c / "templates/operator/rbac.yaml", "{{- with .Values.operator.bgpPasswordSecrets }}", "{{- with .Values.operator.bgpPasswordSecretz }}")),
    ("a resource the code uses, not granted", "default-values.yaml: RBAC grants",
     lambda c: _edit(c / "templates/operator/rbac.yaml", "resources: [endpointslices]", "resources: [endpoints]")),
    ("a pull secret left out of one workload", "external-certs-values.yaml: images",
     lambda c: _edit(c / "templates/agent/daemonset.yaml", "{{- with .Values.imagePullSecrets }}", "{{- with .Values.imagePullSecretz }}")),
    ("the agent's node name not given", "default-values.yaml: flags, ports",
     lambda c: _edit(c / "templates/agent/daemonset.yaml", "- name: NODE_NAME", "- name: NODE")),
    ("an extra capability", "default-values.yaml: RBAC",
     lambda c: _edit(c / "templates/agent/daemonset.yaml", "add: [NET_ADMIN, NET_RAW]", "add: [NET_ADMIN, NET_RAW, SYS_ADMIN]")),
    ("a CRD copy that drifted", "crds: charts/berth/crds equal",
     lambda c: _edit(c / "crds/berth.dev_eips.yaml", "kind: Eip", "kind: Eip\n    listKind: EipList")),
    ("a value without a comment", "values: every value documented",
     lambda c: _edit(c / "values.yaml", "nameOverride: \"\"", "nameOverride: \"\"\nundocumented: 1")),
    ("a values table not regenerated", "values: README table and values.schema.json up to date",
     lambda c: _edit(c / "values.yaml", "# -- Override the chart name used in object names.", "# -- Override the chart's name.")),
    ("generated Secrets not kept on upgrade", "upgrade keeps the generated Secrets",
     lambda c: _edit(c / "templates/gossip-secret.yaml", "{{- if and $old $old.data", "{{- if and false $old $old.data")),
    ("a server certificate without the server name", "default-values.yaml: generated certificates",
     lambda c: _edit(c / "templates/tls.yaml", "(list .Values.tls.serverName)", "(list \"berth\")")),
    ("an alert on a metric no binary exports", "cert-manager-values.yaml: alerts",
     lambda c: _edit(c / "templates/prometheusrule.yaml", "berth_operator_leader", "berth_operator_is_leader")),
    ("an alert slower than its test says", "cert-manager-values.yaml: alerts pass their promtool tests",
     lambda c: _edit(c / "templates/prometheusrule.yaml", "> 0\n          for: 1m", "> 0\n          for: 10m")),
    ("an alert without its runbook", "cert-manager-values.yaml: alerts pass their promtool tests",
     lambda c: _edit(c / "templates/prometheusrule.yaml", "#berthspeakeroutofsync", "#speaker")),
    ("a dashboard query on a metric no binary exports", "cert-manager-values.yaml: dashboard",
     lambda c: _edit(c / "dashboards/berth.json", "berth_agent_owned_ips", "berth_agent_owned_addresses")),
    ("a values.schema.json not regenerated", "values: README table and values.schema.json up to date",
     lambda c: _edit(c / "values.schema.json", '"enum": [\n        "IPv4",', '"enum": [\n        "IPv4", "IPv5",')),
    ("a misspelt value (refused by values.schema.json)", "default-values.yaml: renders",
     lambda c: (c / "ci/default-values.yaml").write_text("operator:\n  replica: 3\n")),
    ("an unknown ipFamily", "ipv6-values.yaml: renders",
     lambda c: _edit(c / "ci/ipv6-values.yaml", "ipFamily: IPv6", "ipFamily: ipv6")),
    ("an admission webhook", "default-values.yaml: no admission webhooks",
     lambda c: (c / "templates/webhook.yaml").write_text(
         "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: berth\nwebhooks: []\n")),
]


def run_mutations(chart: Path, run: Run) -> None:
    for what, must_fail, mutate in MUTATIONS:
        def one(what=what, must_fail=must_fail, mutate=mutate):
            with tempfile.TemporaryDirectory() as tmp:
                copy_ = Path(tmp) / "berth"
                shutil.copytree(chart, copy_)
                mutate(copy_)
                inner = Run(quiet=True, select=must_fail)
                ci = must_fail.split(":")[0]
                run_all(copy_, inner, only=[ci] if ci.endswith(".yaml") else ["default-values.yaml"])
                caught = [n for n in inner.failed if n.startswith(must_fail)]
                if not caught:
                    return [f"not caught by '{must_fail}...' (failed: {inner.failed or 'nothing'})"]
                return []

        run.check(f"mutation caught: {what}", one)


def main(argv: list[str]) -> int:
    chart = ROOT / "charts" / "berth"
    mutations = "--no-mutations" not in argv
    started = time.monotonic()
    run = Run()
    run_all(chart, run)
    for w in WARNINGS:
        print(f"warn {w}")
    if mutations:
        run_mutations(chart, run)
    took = time.monotonic() - started
    print(f"chart tests: {took:.1f} s")
    print(f"{run.passed} passed, {len(run.failed)} failed")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
