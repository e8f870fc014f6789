#!/usr/bin/env python3
"""Renders and checks kyma's deployment artefacts, offline.

  source scripts/common.sh && install_deploy_tools
  "$KYMA_DEPLOY_PYTHON" deploy/check.py [--emit-commands FILE] [--kyma BIN]

1. Renders the Helm chart (deploy/helm/kyma) with the real helm ($KYMA_HELM) and no network,
   with its default values and with each file in deploy/check-values/, after `helm lint
   --strict`; checks that values the chart must refuse are refused; renders NOTES.txt.
2. Renders deploy/kubernetes with kustomize (`$KYMA_KUBECTL kustomize`), alone and with its
   tls component.
3. Validates every rendered object against the Kubernetes JSON schemas of kubernetes-validate
   (strict: no unknown fields) for KUBERNETES_VERSION.
4. Checks what schemas miss: probes, volumes and mounts, referenced Secrets and ConfigMaps,
   Service selectors, the security context, the config files' keys against the subcommand that
   reads them, listen addresses against the declared ports, the query node's memory.
5. With --emit-commands FILE, writes every kyma container as JSON, a list of
     {"source": "helm:<values file>" | "kubernetes" | "kubernetes+tls", "container": NAME,
      "args": [the arguments after the `kyma` entrypoint, starting with the subcommand],
      "env": {NAME: literal value, or "<secret>" for a secretKeyRef},
      "files": {mount path of each file from a ConfigMap: its content},
      "secret_files": [paths of files from Secrets that settings name (TLS)],
      "secret_dirs": [mount paths of whole Secrets (the secrets directory, TLS)]}
   for a test running `kyma <args> --check-config` on each. With --kyma BIN (a kyma binary
   that has --check-config) it runs them itself: each file written under a temporary
   directory, every mount path in args, env and files rewritten to it, "<secret>" replaced by
   a placeholder, placeholder files (a self-signed pair for TLS, with openssl) for secret_files.
   --kyma also takes the subcommands' settings from BIN's --help instead of the built-in list.
6. Checks the Grafana dashboard (deploy/grafana/kyma-dashboard.json): JSON, its
   ${DS_PROMETHEUS} input, and that its queries read only kyma's series (METRICS), all of them.

Exits 1 naming every failure, or prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path, PurePosixPath

try:
    import kubernetes_validate
    import yaml
    from kubernetes_validate.utils import SchemaNotFoundError, ValidationError
except ImportError as e:  # pragma: no cover - a setup problem, said plainly
    sys.exit(
        f"deploy/check.py: {e}. Run it with the Python install_deploy_tools sets up:\n"
        "  source scripts/common.sh && install_deploy_tools && "
        '"$KYMA_DEPLOY_PYTHON" deploy/check.py'
    )

DEPLOY = Path(__file__).resolve().parent
ROOT = DEPLOY.parent
CHART = DEPLOY / "helm" / "kyma"
KUSTOMIZE_DIR = DEPLOY / "kubernetes"
CHECK_VALUES = DEPLOY / "check-values"
DASHBOARD = DEPLOY / "grafana" / "kyma-dashboard.json"

KUBERNETES_VERSION = "1.30.0"
RELEASE, NAMESPACE = "kyma", "kyma"
IMAGE_USER = 10001  # deploy/Dockerfile
QUERY_HEADROOM_MIB = 1024  # memory a query node keeps for running queries, beyond its caches
MIN_WORKER_GRACE_SECONDS = 30  # a worker stops its connectors and revokes its lease on SIGTERM

# The Secrets the plain manifests expect to exist (deploy/kubernetes/kustomization.yaml says
# how to create them); kyma-tls only with the tls component.
KUSTOMIZE_EXISTING_SECRETS = {"kyma-auth", "kyma-object-store", "kyma-connector-secrets"}

# The settings of each subcommand (`kyma <subcommand> --help`): flag name → environment variable.
# --kyma BIN reads them from the binary instead.
_COMMON = ["config", "http-addr", "log-format", "secrets-dir"]
_CLUSTER = ["catalog", "store", "s3-endpoint"]
_SERVE = [
    "grpc-addr",
    "auth-token",
    "tls-cert",
    "tls-key",
    "federation-pushdown",
    "extent-cache-mb",
    "extent-cache-max-object-mb",
    "column-cache-mb",
]
_WORKER = ["worker-id", "lease-ttl-secs", "compact-after-extents", "key-index-max-keys"]
SETTINGS = {
    sub: {flag: "KYMA_" + flag.upper().replace("-", "_") for flag in flags}
    for sub, flags in {
        "standalone": _COMMON + ["data-dir"] + _SERVE,
        "query-node": _COMMON + _CLUSTER + _SERVE,
        "cdc-worker": _COMMON + _CLUSTER + _WORKER,
    }.items()
}
DEFAULTS = {
    "http-addr": "127.0.0.1:8080",
    "grpc-addr": "127.0.0.1:50051",
    "secrets-dir": "/var/run/secrets/kyma",
    "extent-cache-mb": 512,
    "column-cache-mb": 1024,
    "lease-ttl-secs": 10,
}
# Settings that are secret: from a Secret as an environment variable, never a literal.
SECRET_SETTINGS = {"auth-token"}
SECRET_ENV = {"KYMA_AUTH_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}

# The series the dashboard may use (query node, then CDC worker).
METRICS = {
    "kyma_statements_total",
    "kyma_statement_errors_total",
    "kyma_rows_returned_total",
    "kyma_rows_ingested_total",
    "kyma_statement_duration_seconds",
    "kyma_pushdown_total",
    "kyma_pushdown_refused_total",
    "kyma_sync_rows_total",
    "kyma_sync_bytes_total",
    "kyma_sync_snapshot_rows_total",
    "kyma_sync_commits_total",
    "kyma_sync_commit_conflicts_total",
    "kyma_sync_lag_seconds",
    "kyma_sync_errors_total",
    "kyma_sync_compactions_total",
}
HISTOGRAMS = {"kyma_statement_duration_seconds"}

# Values the chart must refuse: (what, values, a fragment of helm's error).
REFUSED_VALUES = [
    (
        "an external etcd without endpoints",
        {"etcd": {"bundled": False}},
        "endpoints",
    ),
    (
        "query node caches that overflow the memory limit",
        {"queryNode": {"extentCacheMb": 2048, "columnCacheMb": 2048}},
        "raise the limit or lower the caches",
    ),
    (
        "a query node without a memory limit",
        {"queryNode": {"resources": {"limits": {"memory": None}}}},
        "set a memory limit",
    ),
    (
        "a worker key in the query node's config",
        {"queryNode": {"extraConfig": {"lease-ttl-secs": 20}}},
        "extraConfig",
    ),
    (
        "a query node key in the worker's config",
        {"cdcWorker": {"extraConfig": {"grpc-addr": "0.0.0.0:1"}}},
        "extraConfig",
    ),
    (
        "TLS without a Secret",
        {"tls": {"enabled": True}},
        "secretName",
    ),
    (
        "an object store that pods cannot share",
        {"objectStore": {"url": "file:///var/lib/kyma/extents"}},
        "objectStore.url",
    ),
    (
        "one worker-id for every worker replica",
        {"cdcWorker": {"extraConfig": {"worker-id": "w1"}}},
        "extraConfig",
    ),
    (
        "an unknown value",
        {"queryNode": {"replica": 3}},
        "replica",
    ),
]


class Failures:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"`{' '.join(cmd)}` timed out after 120 s")


def tool(var: str, name: str) -> str:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = os.environ.get(var) or str(cache / "kyma" / "deploy-tools" / "bin" / name)
    if not os.access(path, os.X_OK):
        sys.exit(
            f"deploy/check.py: ${var} does not name the {name} binary; set it up with\n"
            "  source scripts/common.sh && install_deploy_tools"
        )
    return path


def offline_env(tmp: Path) -> dict[str, str]:
    """An environment in which helm and kubectl have no cluster, no repositories, no network."""
    env = dict(os.environ)
    for k in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        env[k] = str(tmp / k.lower())
    env["KUBECONFIG"] = str(tmp / "no-kubeconfig")
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        env[k] = "http://127.0.0.1:9"  # the discard port: any request fails at once
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    return env


def load_docs(text: str, where: str, failures: Failures) -> list[dict]:
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        failures.add(where, f"the rendered output is not YAML: {e}")
        return []
    for d in docs:
        if not isinstance(d, dict) or "kind" not in d or "apiVersion" not in d:
            failures.add(where, f"a rendered document is not a Kubernetes object: {str(d)[:120]}")
    return [d for d in docs if isinstance(d, dict) and "kind" in d and "apiVersion" in d]


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------------------------------------
# Rendering


class Render:
    def __init__(self, source: str, docs: list[dict], existing_secrets: set[str],
                 existing_service_accounts: set[str], bundled_etcd: bool, notes: str | None):
        self.source = source
        self.docs = docs
        self.existing_secrets = existing_secrets
        self.existing_service_accounts = existing_service_accounts
        self.bundled_etcd = bundled_etcd
        self.notes = notes
        self.values: dict = {}


def helm_existing(values: dict) -> tuple[set[str], set[str]]:
    """The Secrets and ServiceAccounts the values name as existing outside the release."""
    secrets = set()
    for path in (("auth", "existingSecret"), ("objectStore", "credentials", "existingSecret"),
                 ("connectorSecrets", "existingSecret")):
        v = values
        for p in path:
            v = (v or {}).get(p)
        if v:
            secrets.add(v)
    if (values.get("tls") or {}).get("enabled"):
        secrets.add(values["tls"]["secretName"])
    for s in values.get("imagePullSecrets") or []:
        secrets.add(s["name"])
    accounts = set()
    sa = values.get("serviceAccount") or {}
    if not sa.get("create", True):
        accounts.add(sa.get("name") or "default")
    return secrets, accounts


def render_helm(helm: str, env: dict, tmp: Path, failures: Failures) -> list[Render]:
    renders = []
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    cases = [(None, "helm:" + str((CHART / "values.yaml").relative_to(ROOT)))]
    for f in sorted(CHECK_VALUES.glob("*.yaml")):
        cases.append((f, "helm:" + str(f.relative_to(ROOT))))
    if len(cases) < 3:
        failures.add(str(CHECK_VALUES.relative_to(ROOT)), "expected at least two values files")
    # A copy of the chart with one more template that renders NOTES.txt into an object.
    notes_chart = tmp / "notes-chart" / "kyma"
    shutil.copytree(CHART, notes_chart)
    (notes_chart / "templates" / "zz-check-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: check-notes\ndata:\n"
        '  notes: {{ include (print $.Template.BasePath "/NOTES.txt") . | toJson }}\n'
    )
    for values_file, source in cases:
        extra = ["-f", str(values_file)] if values_file else []
        lint = run([helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                    "--kube-version", KUBERNETES_VERSION, *extra], env)
        if lint.returncode != 0:
            failures.add(source, "helm lint --strict failed:\n" + lint.stdout + lint.stderr)
        out = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                   "--kube-version", KUBERNETES_VERSION, *extra], env)
        if out.returncode != 0:
            failures.add(source, "helm template failed:\n" + out.stderr)
            continue
        notes_out = run([helm, "template", RELEASE, str(notes_chart), "--namespace", NAMESPACE,
                         "--kube-version", KUBERNETES_VERSION, "--show-only",
                         "templates/zz-check-notes.yaml", *extra], env)
        notes = None
        if notes_out.returncode != 0:
            failures.add(source, "NOTES.txt does not render:\n" + notes_out.stderr)
        else:
            notes = yaml.safe_load(notes_out.stdout)["data"]["notes"]
        values = deep_merge(defaults, yaml.safe_load(values_file.read_text()) if values_file else {})
        secrets, accounts = helm_existing(values)
        r = Render(source, load_docs(out.stdout, source, failures), secrets, accounts,
                   bool(values["etcd"]["bundled"]), notes)
        r.values = values
        renders.append(r)
    return renders


def check_refused_values(helm: str, env: dict, tmp: Path, failures: Failures) -> int:
    for i, (what, values, fragment) in enumerate(REFUSED_VALUES):
        f = tmp / f"refused-{i}.yaml"
        f.write_text(yaml.safe_dump(values))
        out = run([helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                   "--kube-version", KUBERNETES_VERSION, "-f", str(f)], env)
        if out.returncode == 0:
            failures.add("helm chart", f"accepts {what}: {values}")
        elif fragment not in out.stderr:
            failures.add("helm chart", f"refuses {what} without naming `{fragment}`: {out.stderr.strip()}")
    return len(REFUSED_VALUES)


def render_kustomize(kubectl: str, env: dict, tmp: Path, failures: Failures) -> list[Render]:
    renders = []
    overlay = tmp / "overlay-tls"
    overlay.mkdir()
    rel = os.path.relpath(KUSTOMIZE_DIR, overlay)  # kustomize takes no absolute paths
    (overlay / "kustomization.yaml").write_text(
        f"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel}\ncomponents:\n  - {rel}/tls\n"
    )
    for source, path, secrets in (
        ("kubernetes", KUSTOMIZE_DIR, KUSTOMIZE_EXISTING_SECRETS),
        ("kubernetes+tls", overlay, KUSTOMIZE_EXISTING_SECRETS | {"kyma-tls"}),
    ):
        out = run([kubectl, "kustomize", str(path)], env)
        if out.returncode != 0:
            failures.add(source, "kubectl kustomize failed:\n" + out.stderr)
            continue
        docs = load_docs(out.stdout, source, failures)
        bundled = any(d["kind"] == "StatefulSet" for d in docs)
        renders.append(Render(source, docs, set(secrets), set(), bundled, None))
    return renders


# ---------------------------------------------------------------------------------------------
# Schemas


def validate_schemas(render: Render, failures: Failures) -> int:
    n = 0
    for doc in render.docs:
        where = f"{render.source}: {doc['kind']}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            n += 1
        except ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            failures.add(where, f"not valid for Kubernetes {KUBERNETES_VERSION}: {path}: {e.message}")
        except SchemaNotFoundError as e:
            failures.add(where, e.message)
    return n


# ---------------------------------------------------------------------------------------------
# What schemas miss


def quantity_mib(q) -> float | None:
    if q is None:
        return None
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
    if not m:
        return None
    factor = {None: 1 / 2**20, "Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 2**20, "k": 1e3 / 2**20,
              "M": 1e6 / 2**20, "G": 1e9 / 2**20, "T": 1e12 / 2**20}[m.group(2)]
    return float(m.group(1)) * factor


def labels_match(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def split_kyma_args(container: dict) -> list[str] | None:
    """The container's arguments after the `kyma` entrypoint, or None if it does not run kyma."""
    command = list(container.get("command") or [])
    args = list(container.get("args") or [])
    if command:
        if PurePosixPath(command[0]).name != "kyma":
            return None
        full = command[1:] + args
    else:
        full = args
    if full and full[0] in SETTINGS:
        return full
    return None


def flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == f"--{flag}" and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(f"--{flag}="):
            return a.split("=", 1)[1]
    return None


def host_port(addr: str) -> tuple[str, int] | None:
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:]+):([0-9]+)", str(addr))
    return (m.group(1), int(m.group(2))) if m else None


class Objects:
    def __init__(self, docs: list[dict]):
        self.by_kind: dict[str, dict[str, dict]] = {}
        for d in docs:
            self.by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    def get(self, kind: str, name: str) -> dict | None:
        return self.by_kind.get(kind, {}).get(name)

    def all(self, kind: str) -> list[dict]:
        return list(self.by_kind.get(kind, {}).values())


WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")


def mounted_files(container: dict, volumes: dict[str, dict], objs: Objects, kind: str) -> dict[str, str]:
    """Path → content of each file a container sees from ConfigMap (kind "configMap") volumes,
    or path → "<secret>" for Secret volumes (kind "secret") whose keys are known."""
    files = {}
    for m in container.get("volumeMounts") or []:
        vol = volumes.get(m["name"]) or {}
        if kind not in vol:
            continue
        src = vol[kind]
        if kind == "configMap":
            obj = objs.get("ConfigMap", src["name"]) or {}
            data = dict(obj.get("data") or {})
        else:
            obj = objs.get("Secret", src["secretName"]) or {}
            data = {k: "<secret>" for k in list((obj.get("data") or {})) + list((obj.get("stringData") or {}))}
        if src.get("items"):
            visible = {it["path"]: data.get(it["key"], "<secret>" if kind == "secret" else None)
                       for it in src["items"]}
        else:
            visible = data
        if m.get("subPath"):
            if m["subPath"] in visible:
                files[m["mountPath"]] = visible[m["subPath"]]
        else:
            for p, content in visible.items():
                files[str(PurePosixPath(m["mountPath"]) / p)] = content
    return files


def check_render(render: Render, failures: Failures, settings: dict, commands: list) -> None:
    src = render.source
    objs = Objects(render.docs)

    def fail(where: str, msg: str) -> None:
        failures.add(f"{src}: {where}", msg)

    def secret_known(name: str, key: str | None = None) -> bool:
        if name in render.existing_secrets:
            return True
        s = objs.get("Secret", name)
        if s is None:
            return False
        return key is None or key in (s.get("data") or {}) or key in (s.get("stringData") or {})

    pods = []  # (workload, pod template)
    for kind in WORKLOADS:
        for w in objs.all(kind):
            pods.append((w, w["spec"]["template"]))
    kyma_pods: dict[str, list[tuple[dict, dict, dict]]] = {}  # subcommand → [(workload, pod, container)]

    for w, tpl in pods:
        wname = f"{w['kind']}/{w['metadata']['name']}"
        spec = tpl["spec"]
        labels = (tpl.get("metadata") or {}).get("labels") or {}
        if w["kind"] != "Job" and not labels_match(w["spec"]["selector"].get("matchLabels") or {}, labels):
            fail(wname, "its selector does not select its own pod template")
        psc = spec.get("securityContext") or {}
        if psc.get("runAsUser") == 0 or psc.get("runAsGroup") == 0:
            fail(wname, "runs as root (runAsUser/runAsGroup 0)")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            fail(wname, "pod securityContext.seccompProfile.type is not RuntimeDefault")
        sa = spec.get("serviceAccountName")
        if sa and sa != "default" and not objs.get("ServiceAccount", sa) and sa not in render.existing_service_accounts:
            fail(wname, f"uses ServiceAccount {sa}, which is neither rendered nor named as existing")
        for ps in spec.get("imagePullSecrets") or []:
            if not secret_known(ps["name"]):
                fail(wname, f"pulls with Secret {ps['name']}, which is neither rendered nor named as existing")
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        claim_templates = {c["metadata"]["name"] for c in w["spec"].get("volumeClaimTemplates") or []}
        used = set()
        for v in volumes.values():
            if "configMap" in v:
                cm = objs.get("ConfigMap", v["configMap"]["name"])
                if cm is None:
                    fail(wname, f"volume {v['name']}: ConfigMap {v['configMap']['name']} is not rendered")
                else:
                    for it in v["configMap"].get("items") or []:
                        if it["key"] not in (cm.get("data") or {}):
                            fail(wname, f"volume {v['name']}: ConfigMap {cm['metadata']['name']} has no key {it['key']}")
            if "secret" in v:
                name = v["secret"]["secretName"]
                if not secret_known(name):
                    fail(wname, f"volume {v['name']}: Secret {name} is neither rendered nor named as existing")
                elif objs.get("Secret", name) and name not in render.existing_secrets:
                    for it in v["secret"].get("items") or []:
                        if not secret_known(name, it["key"]):
                            fail(wname, f"volume {v['name']}: Secret {name} has no key {it['key']}")
        containers = spec.get("containers") or []
        for c in (spec.get("initContainers") or []) + containers:
            cname = f"{wname} container {c['name']}"
            csc = c.get("securityContext") or {}
            if not (csc.get("runAsNonRoot", psc.get("runAsNonRoot"))):
                fail(cname, "runAsNonRoot is not true")
            if csc.get("runAsUser", psc.get("runAsUser")) in (None, 0):
                fail(cname, "has no non-zero runAsUser (the image's kyma user is uid 10001)")
            if csc.get("allowPrivilegeEscalation") is not False:
                fail(cname, "allowPrivilegeEscalation is not false")
            if csc.get("readOnlyRootFilesystem") is not True:
                fail(cname, "readOnlyRootFilesystem is not true")
            if "ALL" not in ((csc.get("capabilities") or {}).get("drop") or []):
                fail(cname, "does not drop ALL capabilities")
            if csc.get("privileged"):
                fail(cname, "is privileged")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        fail(cname, f"has no resources.{part}.{r}")
            mem_req = quantity_mib((res.get("requests") or {}).get("memory"))
            mem_lim = quantity_mib((res.get("limits") or {}).get("memory"))
            if mem_req and mem_lim and mem_req > mem_lim:
                fail(cname, "requests more memory than its limit")
            for m in c.get("volumeMounts") or []:
                if m["name"] not in volumes and m["name"] not in claim_templates:
                    fail(cname, f"mounts volume {m['name']}, which the pod does not declare")
                used.add(m["name"])
            ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
            numbers = set(ports.values())
            for env in c.get("env") or []:
                ref = (env.get("valueFrom") or {})
                if "secretKeyRef" in ref:
                    r = ref["secretKeyRef"]
                    if not r.get("optional") and not secret_known(r["name"], r["key"]):
                        fail(cname, f"env {env['name']}: Secret {r['name']} (key {r['key']}) is neither rendered nor named as existing")
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    cm = objs.get("ConfigMap", r["name"])
                    if not cm or r["key"] not in (cm.get("data") or {}):
                        fail(cname, f"env {env['name']}: ConfigMap {r['name']} key {r['key']} is not rendered")
                if env["name"] in SECRET_ENV and "value" in env:
                    fail(cname, f"env {env['name']} is a literal: take it from a Secret (secretKeyRef)")
            for ef in c.get("envFrom") or []:
                if "secretRef" in ef and not secret_known(ef["secretRef"]["name"]):
                    fail(cname, f"envFrom Secret {ef['secretRef']['name']} is neither rendered nor named as existing")
                if "configMapRef" in ef and not objs.get("ConfigMap", ef["configMapRef"]["name"]):
                    fail(cname, f"envFrom ConfigMap {ef['configMapRef']['name']} is not rendered")
            if c in containers:
                for probe in ("readinessProbe", "livenessProbe"):
                    p = c.get(probe)
                    if not p:
                        fail(cname, f"has no {probe}")
                        continue
                    port = (p.get("httpGet") or p.get("tcpSocket") or p.get("grpc") or {}).get("port")
                    if port is None:
                        fail(cname, f"{probe} has no HTTP, TCP or gRPC port")
                    elif (isinstance(port, str) and port not in ports) or (isinstance(port, int) and port not in numbers):
                        fail(cname, f"{probe} uses port {port!r}, which the container does not declare")
            defined = {e["name"] for e in c.get("env") or []}
            for a in (c.get("command") or []) + (c.get("args") or []):
                for var in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", a):
                    if var not in defined:
                        fail(cname, f"`{a}` refers to $({var}), which the container does not define")
            if w["kind"] == "StatefulSet" and c in containers and "etcd" in c.get("image", ""):
                check_etcd(w, c, objs, lambda msg: fail(cname, msg))
            args = split_kyma_args(c)
            if args is not None:
                kyma_pods.setdefault(args[0], []).append((w, tpl, c))
        for name in volumes:
            if name not in used:
                fail(wname, f"declares volume {name} that no container mounts")

    for sub in ("query-node", "cdc-worker"):
        if len(kyma_pods.get(sub, [])) != 1:
            fail("workloads", f"expected one workload running `kyma {sub}`, found {len(kyma_pods.get(sub, []))}")
    for sub, entries in kyma_pods.items():
        for w, tpl, c in entries:
            check_kyma_container(render, objs, w, tpl, c, settings, fail, commands)

    # Services select pods and name their ports.
    pod_templates = [(w, tpl) for w, tpl in pods]
    query_pods = [tpl for w, tpl, c in kyma_pods.get("query-node", [])]
    query_service = None
    for svc in objs.all("Service"):
        sname = f"Service/{svc['metadata']['name']}"
        selector = svc["spec"].get("selector") or {}
        selected = [(w, tpl) for w, tpl in pod_templates
                    if labels_match(selector, (tpl.get("metadata") or {}).get("labels") or {})]
        if not selected:
            fail(sname, f"selects no rendered pods ({selector})")
            continue
        kinds = {w["metadata"]["name"] for w, _ in selected}
        if len(kinds) > 1:
            fail(sname, f"selects the pods of several workloads: {sorted(kinds)}")
        for w, tpl in selected:
            declared = {p.get("name"): p["containerPort"] for c in tpl["spec"]["containers"] for p in c.get("ports") or []}
            for p in svc["spec"].get("ports") or []:
                t = p.get("targetPort", p["port"])
                if (isinstance(t, str) and t not in declared) or (isinstance(t, int) and t not in declared.values()):
                    fail(sname, f"port {p.get('name')} targets {t!r}, not a port of {w['metadata']['name']}")
        if any(tpl in query_pods for _, tpl in selected):
            query_service = svc
        for sts in objs.all("StatefulSet"):
            if sts["spec"].get("serviceName") == svc["metadata"]["name"] and svc["spec"].get("clusterIP") != "None":
                fail(sname, "governs a StatefulSet but is not headless")
    if query_pods and query_service is None:
        fail("Service", "no Service selects the query node pods")
    elif query_service is not None:
        ports = {p["port"]: p for p in query_service["spec"]["ports"]}
        for port, what in ((50051, "Flight SQL/gRPC"), (8080, "HTTP")):
            if port not in ports:
                fail(f"Service/{query_service['metadata']['name']}", f"does not expose the {what} port {port}")
    for sts in objs.all("StatefulSet"):
        if not objs.get("Service", sts["spec"].get("serviceName", "")):
            fail(f"StatefulSet/{sts['metadata']['name']}", f"its serviceName {sts['spec'].get('serviceName')} is not rendered")

    # Disruption budgets.
    for sub in ("query-node", "cdc-worker"):
        for w, tpl, _ in kyma_pods.get(sub, []):
            labels = (tpl.get("metadata") or {}).get("labels") or {}
            pdbs = [p for p in objs.all("PodDisruptionBudget")
                    if labels_match(p["spec"]["selector"].get("matchLabels") or {}, labels)]
            if sub == "cdc-worker" and not pdbs:
                fail(f"{w['kind']}/{w['metadata']['name']}", "has no PodDisruptionBudget")
            for p in pdbs:
                if p["spec"].get("minAvailable") not in (None, 0) and w["spec"].get("replicas", 1) <= 1:
                    fail(f"PodDisruptionBudget/{p['metadata']['name']}", "minAvailable with one replica blocks every drain")
    for p in objs.all("PodDisruptionBudget"):
        sel = p["spec"]["selector"].get("matchLabels") or {}
        if not any(labels_match(sel, (tpl.get("metadata") or {}).get("labels") or {}) for _, tpl in pod_templates):
            fail(f"PodDisruptionBudget/{p['metadata']['name']}", "selects no rendered pods")

    if render.bundled_etcd and not objs.all("StatefulSet"):
        fail("etcd", "the bundled etcd's StatefulSet is not rendered")
    if not render.bundled_etcd and objs.all("StatefulSet"):
        fail("etcd", "an external etcd is configured but a StatefulSet is rendered")

    if render.notes is not None:
        check_notes(render, fail)


def check_kyma_container(render: Render, objs: Objects, w: dict, tpl: dict, c: dict,
                         settings: dict, fail, commands: list) -> None:
    args = split_kyma_args(c)
    sub = args[0]
    known = settings[sub]
    env_to_flag = {v: k for k, v in known.items()}
    cname = f"{w['kind']}/{w['metadata']['name']} container {c['name']}"
    spec = tpl["spec"]
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    cm_files = mounted_files(c, volumes, objs, "configMap")
    secret_files = mounted_files(c, volumes, objs, "secret")
    secret_dirs = sorted(m["mountPath"] for m in c.get("volumeMounts") or []
                         if "secret" in (volumes.get(m["name"]) or {}) and not m.get("subPath"))
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
    uid = (c.get("securityContext") or {}).get("runAsUser", (spec.get("securityContext") or {}).get("runAsUser"))
    if uid != IMAGE_USER:
        fail(cname, f"runs as uid {uid}, not the image's kyma user {IMAGE_USER} (deploy/Dockerfile)")
    if not any(m["mountPath"] == "/tmp" and "emptyDir" in (volumes.get(m["name"]) or {})
               for m in c.get("volumeMounts") or []):
        fail(cname, "has a read-only root filesystem but no emptyDir at /tmp to write temporary files to")

    # Flags on the command line.
    effective: dict[str, object] = {}
    for a in args[1:]:
        if a.startswith("--"):
            flag = a[2:].split("=", 1)[0]
            if flag not in known:
                fail(cname, f"`kyma {sub}` has no flag --{flag}")
    for flag in known:
        v = flag_value(args, flag)
        if v is not None:
            effective[flag] = v
    # Environment.
    env_out: dict[str, str] = {}
    for e in c.get("env") or []:
        name = e["name"]
        ref = e.get("valueFrom") or {}
        if "value" in e or not ref:
            value = str(e.get("value", ""))
        elif "secretKeyRef" in ref:
            value = "<secret>"
        elif "configMapKeyRef" in ref:
            cm = objs.get("ConfigMap", ref["configMapKeyRef"]["name"]) or {}
            value = str((cm.get("data") or {}).get(ref["configMapKeyRef"]["key"], ""))
        elif "fieldRef" in ref:
            value = f"<field:{ref['fieldRef']['fieldPath']}>"
        else:
            value = "<resource>"
        env_out[name] = value
        if name.startswith("KYMA_") and not name.startswith("KYMA_SECRET_"):
            if name not in env_to_flag:
                fail(cname, f"env {name} is not a setting of `kyma {sub}`")
            elif env_to_flag[name] not in effective:
                effective[env_to_flag[name]] = value
        if name == "KYMA_AUTH_TOKEN" and "secretKeyRef" not in ref:
            fail(cname, "KYMA_AUTH_TOKEN must come from a Secret")
    # The config file.
    config_path = effective.get("config")
    if config_path is None:
        fail(cname, "reads no config file (--config or KYMA_CONFIG)")
        config = {}
    elif config_path not in cm_files or cm_files[config_path] is None:
        fail(cname, f"its config file {config_path} is not mounted from a rendered ConfigMap")
        config = {}
    else:
        try:
            config = tomllib.loads(cm_files[config_path])
        except tomllib.TOMLDecodeError as e:
            fail(cname, f"its config file {config_path} is not valid TOML: {e}")
            config = {}
    for key, value in config.items():
        flag = key.replace("_", "-")
        if flag not in known or flag == "config":
            fail(cname, f"config file {config_path}: `kyma {sub}` has no setting `{key}`")
            continue
        if flag in SECRET_SETTINGS:
            fail(cname, f"config file {config_path}: `{key}` is a secret: take it from a Secret as {known[flag]}")
        if not isinstance(value, (str, int, bool)) or isinstance(value, float):
            fail(cname, f"config file {config_path}: `{key}` must be a string, integer or boolean")
        effective.setdefault(flag, value)
    for flag, value in DEFAULTS.items():
        if flag in known:
            effective.setdefault(flag, value)

    # Listen addresses against the declared ports and probes.
    addr_ports = {"http-addr": "http", "grpc-addr": "grpc"}
    for flag, port_name in addr_ports.items():
        if flag not in known:
            continue
        hp = host_port(effective[flag])
        if not hp:
            fail(cname, f"{flag} `{effective[flag]}` is not HOST:PORT")
            continue
        if hp[0] not in ("0.0.0.0", "[::]"):
            fail(cname, f"{flag} listens on {hp[0]}: other pods cannot reach it (use 0.0.0.0)")
        if ports.get(port_name) != hp[1]:
            fail(cname, f"{flag} port {hp[1]} is not the declared container port `{port_name}` ({ports.get(port_name)})")
    http_port = host_port(effective["http-addr"])[1] if host_port(effective["http-addr"]) else None
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        port = get.get("port")
        port = ports.get(port) if isinstance(port, str) else port
        if get.get("path") != path or port != http_port:
            fail(cname, f"{probe} must be GET {path} on the HTTP port {http_port} (is {get.get('path')} on {port})")
    annotations = (tpl.get("metadata") or {}).get("annotations") or {}
    if annotations.get("prometheus.io/scrape") == "true":
        if str(annotations.get("prometheus.io/port")) != str(http_port) or annotations.get("prometheus.io/path", "/metrics") != "/metrics":
            fail(cname, "the prometheus.io annotations do not point at /metrics on the HTTP port")
    elif ports.get("http") != http_port:
        fail(cname, "neither prometheus.io annotations nor a port named http for /metrics")

    # Secrets: the secrets directory and TLS files come from Secret volumes; the token from a Secret.
    sdir = str(effective["secrets-dir"])
    if sdir not in secret_dirs:
        fail(cname, f"the secrets directory {sdir} is not a mounted Secret")
    if sub in ("query-node", "standalone"):
        cert, key = effective.get("tls-cert"), effective.get("tls-key")
        if bool(cert) != bool(key):
            fail(cname, "sets only one of tls-cert and tls-key")
        for f in (cert, key):
            if f and f not in secret_files:
                fail(cname, f"TLS file {f} is not a key of a mounted Secret")
    # Caches against the memory limit.
    if sub == "query-node":
        limit = quantity_mib(((c.get("resources") or {}).get("limits") or {}).get("memory"))
        caches = int(effective["extent-cache-mb"]) + int(effective["column-cache-mb"])
        if limit is None:
            fail(cname, "has no memory limit for its caches")
        elif caches + QUERY_HEADROOM_MIB > limit:
            fail(cname, f"extent-cache-mb + column-cache-mb = {caches} MiB, plus {QUERY_HEADROOM_MIB} MiB for "
                        f"queries, is over the memory limit ({limit:.0f} MiB)")
    if sub == "cdc-worker":
        if effective.get("worker-id") and w["spec"].get("replicas", 1) > 1:
            fail(cname, f"every replica would claim connectors as worker-id {effective['worker-id']!r}: "
                        "leave it unset (host name and process id)")
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace < MIN_WORKER_GRACE_SECONDS:
            fail(cname, f"terminationGracePeriodSeconds {grace} leaves too little time to stop and revoke the lease (< {MIN_WORKER_GRACE_SECONDS})")
    # The catalog points at the bundled etcd's members when there is one.
    catalog = str(effective.get("catalog", ""))
    m = re.fullmatch(r"etcd://([^/]+)/(.+)", catalog)
    if not m:
        fail(cname, f"catalog `{catalog}` is not etcd://HOST:PORT[,HOST:PORT]/PREFIX")
    elif render.bundled_etcd:
        sts = objs.all("StatefulSet")[0] if objs.all("StatefulSet") else None
        if sts:
            svc, name = sts["spec"]["serviceName"], sts["metadata"]["name"]
            members = {f"{name}-{i}" for i in range(sts["spec"].get("replicas", 1))}
            for hp in m.group(1).split(","):
                host, _, port = hp.partition(":")
                parts = host.split(".")
                if parts[0] not in members or len(parts) < 2 or parts[1] != svc or port != "2379":
                    fail(cname, f"catalog endpoint {hp} is not a member of the bundled etcd ({name}-N.{svc}:2379)")
            if len(m.group(1).split(",")) != len(members):
                fail(cname, f"catalog names {len(m.group(1).split(','))} etcd members, the StatefulSet runs {len(members)}")
    if not re.match(r"(s3|gs|az|file|memory)://", str(effective.get("store", ""))):
        fail(cname, f"store `{effective.get('store')}` is not an object store URL")

    commands.append({
        "source": render.source,
        "container": c["name"],
        "args": args,
        "env": env_out,
        "files": {p: content for p, content in sorted(cm_files.items()) if content is not None},
        "secret_files": sorted(p for p in secret_files if p in (effective.get("tls-cert"), effective.get("tls-key"))
                               or not any(p.startswith(d + "/") for d in secret_dirs)),
        "secret_dirs": secret_dirs,
    })


def check_etcd(sts: dict, c: dict, objs: Objects, fail) -> None:
    """The bundled etcd's members: one per replica, each at its stable name under the headless
    Service, all listed in --initial-cluster."""
    name, svc = sts["metadata"]["name"], sts["spec"]["serviceName"]
    replicas = sts["spec"].get("replicas", 1)
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in c.get("args") or [] if a.startswith("--") and "=" in a}
    env = {e["name"]: e for e in c.get("env") or []}
    if args.get("--name") != "$(POD_NAME)" or ((env.get("POD_NAME") or {}).get("valueFrom") or {}).get(
            "fieldRef", {}).get("fieldPath") != "metadata.name":
        fail("--name must be $(POD_NAME), the pod's name")
    members = {}
    for m in (args.get("--initial-cluster") or "").split(","):
        member, _, url = m.partition("=")
        members[member] = url
    want = {f"{name}-{i}" for i in range(replicas)}
    if set(members) != want:
        fail(f"--initial-cluster names {sorted(members)}, the StatefulSet runs {sorted(want)}")
    for member, url in members.items():
        if not re.fullmatch(rf"http://{re.escape(member)}\.{re.escape(svc)}(\.[^:/]+)?:2380", url):
            fail(f"--initial-cluster: {member}'s peer URL {url} is not {member}.{svc}…:2380")
    for flag, port in (("--initial-advertise-peer-urls", 2380), ("--advertise-client-urls", 2379)):
        if not re.fullmatch(rf"http://\$\(POD_NAME\)\.{re.escape(svc)}(\.[^:/]+)?:{port}", args.get(flag, "")):
            fail(f"{flag} is not http://$(POD_NAME).{svc}…:{port}")
    headless = objs.get("Service", svc)
    if headless and not headless["spec"].get("publishNotReadyAddresses"):
        fail(f"Service {svc} must publish not-ready addresses: members find each other before they are ready")
    if replicas > 1 and sts["spec"].get("podManagementPolicy") != "Parallel":
        fail("podManagementPolicy must be Parallel: a new cluster needs its quorum to start")


def check_notes(render: Render, fail) -> None:
    notes = render.notes
    tls = (render.values.get("tls") or {}).get("enabled")
    auth = (render.values.get("auth") or {}).get("existingSecret") or (render.values.get("auth") or {}).get("token")
    scheme = "grpc+tls://" if tls else "grpc://"
    for needle in ("import adbc_driver_flightsql.dbapi as flight", f'flight.connect("{scheme}', ":50051"):
        if needle not in notes:
            fail("NOTES.txt", f"does not show `{needle}`")
    if not tls and "grpc+tls://" in notes:
        fail("NOTES.txt", "shows grpc+tls:// while TLS is off")
    if auth and 'db_kwargs={"username": "kyma", "password": ' not in notes:
        fail("NOTES.txt", "does not show the basic-auth db_kwargs while auth is on")
    if not auth and "db_kwargs" in notes:
        fail("NOTES.txt", "shows db_kwargs while auth is off")
    if (render.values.get("auth") or {}).get("token") and render.values["auth"]["token"] in notes:
        fail("NOTES.txt", "prints the auth token")


def check_consistency(renders: list[Render], failures: Failures) -> None:
    """The plain manifests and the chart's defaults describe the same processes."""
    def settings_of(render: Render) -> dict:
        out = {}
        objs = Objects(render.docs)
        for w in objs.all("Deployment"):
            for c in w["spec"]["template"]["spec"]["containers"]:
                args = split_kyma_args(c)
                if args:
                    vols = {v["name"]: v for v in w["spec"]["template"]["spec"].get("volumes") or []}
                    files = mounted_files(c, vols, objs, "configMap")
                    cfg = tomllib.loads(files.get(flag_value(args, "config") or "", "") or "")
                    cfg.pop("catalog", None)
                    out[args[0]] = (cfg, c.get("resources"), c.get("securityContext"),
                                    w["spec"]["template"]["spec"].get("terminationGracePeriodSeconds"))
        return out
    by_source = {r.source: r for r in renders}
    plain = by_source.get("kubernetes")
    default = next((r for r in renders if r.source.endswith("helm/kyma/values.yaml")), None)
    if plain and default:
        a, b = settings_of(plain), settings_of(default)
        parts = ("config file (but the catalog)", "resources", "securityContext",
                 "terminationGracePeriodSeconds")
        for sub in sorted(set(a) | set(b)):
            if sub not in a or sub not in b:
                failures.add("kubernetes vs helm defaults", f"only one runs `kyma {sub}`")
                continue
            for part, x, y in zip(parts, a[sub], b[sub]):
                if part.startswith("config"):
                    for k in sorted(set(x) | set(y)):
                        if x.get(k) != y.get(k):
                            failures.add("kubernetes vs helm defaults",
                                         f"`kyma {sub}` {part}: {k} = {x.get(k)!r} vs {y.get(k)!r}")
                elif x != y:
                    failures.add("kubernetes vs helm defaults", f"`kyma {sub}` {part}: {x} vs {y}")


# ---------------------------------------------------------------------------------------------
# Grafana

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
    "unless", "inf", "nan",
}


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (functions, labels and keywords left out)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # dashboard variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group(0)
        rest = e[m.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if re.fullmatch(r"[0-9.e]+", word):
            continue
        names.add(word)
    return names


def check_dashboard(failures: Failures) -> int:
    where = str(DASHBOARD.relative_to(ROOT))
    try:
        dash = json.loads(DASHBOARD.read_text())
    except (OSError, json.JSONDecodeError) as e:
        failures.add(where, f"not valid JSON: {e}")
        return 0
    if not isinstance(dash.get("schemaVersion"), int) or not 36 <= dash["schemaVersion"] <= 41:
        failures.add(where, f"schemaVersion {dash.get('schemaVersion')} is not 36–41")
    inputs = {i.get("name"): i for i in dash.get("__inputs") or []}
    ds_input = inputs.get("DS_PROMETHEUS")
    if not ds_input or ds_input.get("type") != "datasource" or ds_input.get("pluginId") != "prometheus":
        failures.add(where, "has no DS_PROMETHEUS datasource input (pluginId prometheus)")
    for k in ("title", "uid", "panels"):
        if not dash.get(k):
            failures.add(where, f"has no {k}")
    want_ds = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
    exprs = []
    ids = set()
    panels = []
    for p in dash.get("panels") or []:
        panels.append(p)
        panels.extend(p.get("panels") or [])
    for p in panels:
        title = f"panel {p.get('title')!r}"
        if p.get("id") in ids:
            failures.add(where, f"{title}: duplicate id {p.get('id')}")
        ids.add(p.get("id"))
        g = p.get("gridPos") or {}
        if not all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")) or g["x"] + g["w"] > 24:
            failures.add(where, f"{title}: bad gridPos {g}")
        if p.get("type") == "row":
            continue
        if p.get("datasource") != want_ds:
            failures.add(where, f"{title}: datasource is not ${{DS_PROMETHEUS}}")
        if not p.get("targets"):
            failures.add(where, f"{title}: has no queries")
        for t in p.get("targets") or []:
            if t.get("datasource", want_ds) != want_ds:
                failures.add(where, f"{title}: a query's datasource is not ${{DS_PROMETHEUS}}")
            if not t.get("expr"):
                failures.add(where, f"{title}: a query has no expr")
                continue
            exprs.append((title, t["expr"]))
    for v in (dash.get("templating") or {}).get("list") or []:
        if v.get("type") == "query":
            if v.get("datasource") != want_ds:
                failures.add(where, f"variable {v.get('name')}: datasource is not ${{DS_PROMETHEUS}}")
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            m = re.fullmatch(r"label_values\((?:(\w+)(?:\{[^}]*\})?,\s*)?(\w+)\)", q or "")
            if not m:
                failures.add(where, f"variable {v.get('name')}: query {q!r} is not label_values(METRIC, LABEL)")
            elif m.group(1):
                exprs.append((f"variable {v.get('name')}", m.group(1)))
    allowed = set(METRICS)
    for h in HISTOGRAMS:
        allowed |= {f"{h}_bucket", f"{h}_sum", f"{h}_count"}
        allowed.discard(h)
    seen = set()
    for title, expr in exprs:
        if expr.count("(") != expr.count(")"):
            failures.add(where, f"{title}: unbalanced parentheses in {expr}")
        names = metric_names(expr)
        if not names:
            failures.add(where, f"{title}: no series in {expr}")
        for n in names:
            if n not in allowed:
                failures.add(where, f"{title}: `{n}` is not a kyma series ({expr})")
            seen.add(re.sub(r"_(bucket|sum|count)$", "", n) if n.startswith(tuple(HISTOGRAMS)) else n)
        if "_bucket" in expr and not re.search(r"histogram_quantile\(\s*0?\.\d+,.*by \([^)]*\ble\b", expr):
            failures.add(where, f"{title}: a histogram's buckets are read without histogram_quantile by (le): {expr}")
        for m in re.finditer(r"\b(rate|increase)\((\w+)", expr):
            if m.group(2) in METRICS and not m.group(2).endswith("_total"):
                failures.add(where, f"{title}: {m.group(1)}() of the gauge {m.group(2)}")
    for name in sorted(METRICS - seen):
        failures.add(where, f"no panel shows {name}")
    for q in ("0.5", "0.99"):
        if not any(f"histogram_quantile({q}," in e for _, e in exprs):
            failures.add(where, f"no panel shows the p{q[2:].ljust(2, '0')} statement duration")
    return len(exprs)


# ---------------------------------------------------------------------------------------------


def settings_from_binary(kyma: str) -> dict:
    """flag → environment variable of each subcommand, from `kyma <subcommand> --help`."""
    out = {}
    for sub in SETTINGS:
        r = run([kyma, sub, "--help"])
        if r.returncode != 0:
            sys.exit(f"deploy/check.py: `{kyma} {sub} --help` failed: {r.stderr}")
        flags = {}
        # One block per option: its `--flag` line and the indented help under it.
        for block in re.split(r"\n(?=\s+(?:-\w, )?--[a-z])", r.stdout):
            m = re.match(r"\s+(?:-\w, )?--([a-z0-9-]+)", block)
            if not m or m.group(1) in ("help", "version", "check-config"):
                continue
            env = re.search(r"\[env: (KYMA_[A-Z0-9_]+)", block)
            flags[m.group(1)] = env.group(1) if env else None
        out[sub] = flags
    return out


def run_check_config(kyma: str, commands: list, failures: Failures) -> int | None:
    """Runs `kyma <args> --check-config` for each emitted command, its files written under a
    temporary directory and every path they are mounted at rewritten to that copy. None when
    this kyma has no --check-config."""
    if "--check-config" not in run([kyma, "query-node", "--help"]).stdout:
        return None
    openssl = shutil.which("openssl")
    n = 0
    for cmd in commands:
        where = f"{cmd['source']}: {cmd['container']}: kyma --check-config"
        with tempfile.TemporaryDirectory(prefix="kyma-check-config-") as t:
            root = Path(t)
            paths = list(cmd["files"]) + cmd["secret_files"] + cmd["secret_dirs"]

            def local(text: str) -> str:
                for p in sorted(paths, key=len, reverse=True):
                    text = text.replace(p, str(root) + p)
                return text

            for d in cmd["secret_dirs"]:
                (root / d.lstrip("/")).mkdir(parents=True, exist_ok=True)
            for p, content in cmd["files"].items():
                f = root / p.lstrip("/")
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_text(local(content))
            tls = [p for p in cmd["secret_files"] if p.endswith((".crt", ".key"))]
            for p in cmd["secret_files"]:
                (root / p.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
                (root / p.lstrip("/")).write_text("placeholder\n")
            if tls and openssl:
                cert = next(p for p in tls if p.endswith(".crt"))
                key = next(p for p in tls if p.endswith(".key"))
                run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                     "-subj", "/CN=kyma", "-keyout", str(root / key.lstrip("/")),
                     "-out", str(root / cert.lstrip("/"))])
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            for k, v in cmd["env"].items():
                env[k] = "check-config-placeholder" if v.startswith("<") else local(v)
            r = run([kyma, *[local(a) for a in cmd["args"]], "--check-config"], env)
            if r.returncode != 0:
                failures.add(where, f"exit {r.returncode}: {(r.stderr or r.stdout).strip()}")
            n += 1
    return n


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--emit-commands", metavar="FILE", type=Path,
                        help="write each kyma container's args, env and config files as JSON")
    parser.add_argument("--kyma", metavar="BIN",
                        help="take the subcommands' settings from this kyma binary's --help, and "
                             "run `BIN <args> --check-config` for each kyma container (when BIN "
                             "has that flag)")
    opts = parser.parse_args()
    started = time.monotonic()
    helm = tool("KYMA_HELM", "helm")
    kubectl = tool("KYMA_KUBECTL", "kubectl")
    settings = settings_from_binary(opts.kyma) if opts.kyma else SETTINGS
    failures = Failures()
    with tempfile.TemporaryDirectory(prefix="kyma-deploy-check-") as t:
        tmp = Path(t)
        env = offline_env(tmp)
        renders = render_helm(helm, env, tmp, failures)
        refused = check_refused_values(helm, env, tmp, failures)
        renders += render_kustomize(kubectl, env, tmp, failures)
    validated = sum(validate_schemas(r, failures) for r in renders)
    commands: list = []
    for r in renders:
        check_render(r, failures, settings, commands)
    check_consistency(renders, failures)
    queries = check_dashboard(failures)
    checked = run_check_config(opts.kyma, commands, failures) if opts.kyma else None
    if opts.emit_commands:
        opts.emit_commands.write_text(json.dumps(commands, indent=2) + "\n")
    elapsed = time.monotonic() - started
    if failures.items:
        print(f"deploy/check.py: {len(failures.items)} problem(s):", file=sys.stderr)
        for f in failures.items:
            print("  - " + f.replace("\n", "\n    "), file=sys.stderr)
        return 1
    print(
        f"deploy/check.py: OK in {elapsed:.1f}s: {len(renders)} renders "
        f"({', '.join(r.source for r in renders)}), {validated} objects valid for Kubernetes "
        f"{KUBERNETES_VERSION} (strict), {refused} bad values refused by the chart, "
        f"{len(commands)} kyma containers checked"
        + (f" and written to {opts.emit_commands}" if opts.emit_commands else "")
        + (f", {checked} accepted by `kyma --check-config`" if checked is not None
           else ", `kyma --check-config` not run (no --kyma BIN)" if not opts.kyma
           else f", `kyma --check-config` not run ({opts.kyma} has no such flag)")
        + f", {queries} dashboard queries on kyma's series."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
