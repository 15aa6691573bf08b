#!/usr/bin/env python3
"""The Helm chart tested the way chart authors do, without a cluster.

- `helm lint --strict` (Helm's own Go code, through helm-python-sdk) for the default and
  the hetero values;
- `helm template` of each, every manifest validated against the Kubernetes OpenAPI schemas
  (kubernetes-validate, strict: unknown fields are errors) for the oldest and newest
  Kubernetes the chart supports; the ServiceMonitor (a CRD, not in those schemas) is
  checked field by field;
- assertions on what matters: each pool on its node type with its hardware label,
  probes on /health, the cluster secret mounted and passed as a file (never as a flag's
  value), non-root, the gateway the only Service clients may reach, the control and KV
  ports covered by NetworkPolicies, values-hetero.yaml carrying
  configs/hetero-h100-a100.toml verbatim (and, given a genie binary, that the gateway
  compiles it);
- bad values refused by values.schema.json.

    pip install helm-python-sdk kubernetes-validate pyyaml
    python3 deploy/helm/test_chart.py [GENIE_BINARY]
"""
import copy
import os
import subprocess
import sys
import tempfile

import yaml
import helm_python
from helm_python import chart as helm
import kubernetes_validate

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHART = os.path.join(ROOT, "deploy", "helm", "genie")
KUBE_VERSIONS = ["1.25.0", "1.37.0"]
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


def load_values(name):
    with open(os.path.join(CHART, name)) as f:
        return yaml.safe_load(f)


def render(values=None, name="genie", namespace="llm"):
    out = helm.Chart.load(CHART).render(values, name=name, namespace=namespace, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for d in yaml.safe_load_all(text):
            if d:
                docs.append(d)
    return docs


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def container(dep):
    return dep["spec"]["template"]["spec"]["containers"][0]


def arg_after(args, flag):
    return args[args.index(flag) + 1] if flag in args else None


def validate(docs, label):
    for v in KUBE_VERSIONS:
        bad = 0
        for d in docs:
            if d["kind"] == "ServiceMonitor":
                continue
            try:
                kubernetes_validate.validate(d, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                bad += 1
                print(f"     {d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
            except kubernetes_validate.SchemaNotFoundError as e:
                bad += 1
                print(f"     {d['kind']}/{d['metadata']['name']}: no schema ({e})")
        n = sum(1 for d in docs if d["kind"] != "ServiceMonitor")
        check(bad == 0, f"{label}: {n} manifests valid against Kubernetes {v} (strict)")


def lint(values, label):
    report = helm.lint(CHART, values, strict=True)
    errs = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2] + report.get("errors", [])
    for m in errs:
        print("     lint:", m)
    check(not errs, f"{label}: helm lint --strict clean")


def common_assertions(docs, label, release="genie"):
    deps = by_kind(docs, "Deployment")
    svcs = by_kind(docs, "Service")
    check(set(deps) == {f"{release}-gateway", f"{release}-prefill", f"{release}-decode"},
          f"{label}: gateway, prefill and decode Deployments ({sorted(deps)})")
    secret_name = None
    for name, dep in deps.items():
        pod = dep["spec"]["template"]["spec"]
        c = container(dep)
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            p = c.get(probe, {}).get("httpGet", {})
            check(p.get("path") == "/health" and p.get("port") == "http",
                  f"{label}: {name} {probe} on /health")
        args = c["args"]
        secret_file = arg_after(args, "--cluster-secret-file")
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in pod["volumes"]}
        ok = (secret_file is not None and "cluster-secret" in mounts
              and secret_file.startswith(mounts["cluster-secret"]["mountPath"] + "/")
              and mounts["cluster-secret"].get("readOnly") is True
              and "secret" in vols["cluster-secret"])
        check(ok, f"{label}: {name} reads the cluster secret from a mounted Secret ({secret_file})")
        secret_name = vols["cluster-secret"]["secret"]["secretName"]
        env_names = {e["name"] for e in c.get("env", [])}
        check("GENIE_CLUSTER_SECRET" not in env_names and not any("--cluster-secret=" in a for a in args),
              f"{label}: {name} has no secret on its command line or in plain env")
        sc = pod.get("securityContext", {})
        csc = c.get("securityContext", {})
        check(sc.get("runAsNonRoot") is True and sc.get("runAsUser") == 10001
              and csc.get("allowPrivilegeEscalation") is False and csc.get("readOnlyRootFilesystem") is True,
              f"{label}: {name} runs as non-root uid 10001, read-only root, no privilege escalation")
        check(pod.get("automountServiceAccountToken") is False, f"{label}: {name} mounts no API token")
    secrets = by_kind(docs, "Secret")
    check(secret_name in secrets or secret_name not in (None, f"{release}-cluster"),
          f"{label}: the cluster Secret {secret_name} exists or is the user's")
    # The gateway's public Service is the only one a client may reach; every other Service
    # is ClusterIP (worker Services headless) and none carries the internal or KV ports.
    public = svcs[release]
    gw_internal = deps[f"{release}-gateway"]["spec"]["template"]["spec"]["containers"][0]["ports"]
    internal_port = next(p["containerPort"] for p in gw_internal if p["name"] == "internal")
    check([p["targetPort"] for p in public["spec"]["ports"]] == ["http"],
          f"{label}: the public Service carries only the gateway's http port")
    for n, s in svcs.items():
        if n == release:
            continue
        check(s["spec"].get("type", "ClusterIP") == "ClusterIP", f"{label}: Service {n} is ClusterIP")
    check(svcs[f"{release}-internal"]["spec"]["ports"][0]["port"] == internal_port,
          f"{label}: the control plane ({internal_port}) has its own internal Service")
    for role in ("prefill", "decode"):
        check(svcs[f"{release}-{role}"]["spec"].get("clusterIP") == "None",
              f"{label}: {role} Service is headless")
        args = container(deps[f"{release}-{role}"])["args"]
        check(arg_after(args, "--gateway") == f"http://{release}-internal:{internal_port}"
              or arg_after(args, "--gateway") == f"https://{release}-internal:{internal_port}",
              f"{label}: {role} registers at the internal Service")
        check(arg_after(args, "--advertise-host") == "$(POD_IP)",
              f"{label}: {role} advertises its pod IP")
    pols = by_kind(docs, "NetworkPolicy")
    ports = {p["port"] for r in pols[f"{release}-workers"]["spec"]["ingress"] for p in r["ports"]}
    check({9000, 9001} <= ports and all("from" in r for r in pols[f"{release}-workers"]["spec"]["ingress"]),
          f"{label}: worker control and KV ports only from the release's pods ({sorted(ports)})")
    gw_rules = pols[f"{release}-gateway"]["spec"]["ingress"]
    internal_rules = [r for r in gw_rules if any(p["port"] == internal_port for p in r["ports"])]
    check(internal_rules and all("from" in r for r in internal_rules),
          f"{label}: the gateway's internal port only from workers")
    pdbs = by_kind(docs, "PodDisruptionBudget")
    check(len(pdbs) == 3, f"{label}: a PodDisruptionBudget per component ({sorted(pdbs)})")
    return deps


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else None
    print(f"helm SDK {helm_sdk_version()}, kubernetes-validate {kubernetes_validate.__version__}")

    # --- default values --------------------------------------------------------------
    lint(None, "default")
    docs = render()
    validate(docs, "default")
    deps = common_assertions(docs, "default")
    for role in ("prefill", "decode"):
        d = deps[f"genie-{role}"]
        check(d["spec"]["replicas"] == 2, f"default: 2 {role} replicas")
        check(arg_after(container(d)["args"], "--hardware") == "cpu", f"default: {role} --hardware cpu")
        init = d["spec"]["template"]["spec"].get("initContainers", [])
        check(init and init[0]["args"] == ["model", "fetch"], f"default: {role} fetches the model first")
    check(by_kind(docs, "Service")["genie"]["spec"]["type"] == "ClusterIP",
          "default: the public Service is ClusterIP until the user exposes it")
    check(not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "HorizontalPodAutoscaler"),
          "default: no ServiceMonitor or HPA unless asked")
    check(not by_kind(docs, "ConfigMap"), "default: no config (the default plan)")

    # --- values-hetero.yaml ------------------------------------------------------------
    hetero = load_values("values-hetero.yaml")
    lint(hetero, "hetero")
    docs = render(hetero)
    validate(docs, "hetero")
    deps = common_assertions(docs, "hetero")
    want = {"prefill": ("h100", "NVIDIA-H100-80GB-HBM3", 4), "decode": ("a100", "NVIDIA-A100-SXM4-80GB", 2)}
    for role, (hw, product, replicas) in want.items():
        d = deps[f"genie-{role}"]
        pod = d["spec"]["template"]["spec"]
        c = container(d)
        check(pod.get("nodeSelector", {}).get("nvidia.com/gpu.product") == product,
              f"hetero: {role} pods on {product} nodes")
        check(any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])),
              f"hetero: {role} tolerates the GPU taint")
        check(arg_after(c["args"], "--hardware") == hw
              and d["metadata"]["labels"]["genie.ai/hardware"] == hw,
              f"hetero: {role} registers as --hardware {hw}")
        check(c["resources"]["limits"].get("nvidia.com/gpu") == 2, f"hetero: {role} gets 2 GPUs (tensor parallel 2)")
        check(arg_after(c["args"], "--kv-transport") == "rdma", f"hetero: {role} moves KV over RDMA")
        check("IPC_LOCK" in c["securityContext"]["capabilities"].get("add", []),
              f"hetero: {role} has IPC_LOCK (pinned RDMA memory)")
        check(c["resources"]["limits"].get("rdma/rdma_shared_device_a") == "1"
              and "hugepages-2Mi" in c["resources"]["limits"],
              f"hetero: {role} asks for an RDMA device and hugepages")
    # 8 H100 prefill GPUs as 4 replicas, 4 A100 decode GPUs as 2: what the plan says.
    check("replicas" not in deps["genie-prefill"]["spec"], "hetero: the prefill HPA owns the replica count")
    hpas = by_kind(docs, "HorizontalPodAutoscaler")
    hpa = hpas.get("genie-prefill")
    check(hpa is not None and hpa["spec"]["metrics"][0]["object"]["metric"]["name"] == "genie_num_requests_waiting"
          and hpa["spec"]["minReplicas"] == 4 and hpa["spec"]["maxReplicas"] == 4,
          "hetero: the prefill HPA reads the gateway's queue, 4 replicas (8 H100 / tp 2)")
    check(deps["genie-decode"]["spec"]["replicas"] == 2, "hetero: 2 decode replicas (4 A100 / tp 2)")
    cms = by_kind(docs, "ConfigMap")
    toml = cms["genie-config"]["data"]["genie.toml"]
    with open(os.path.join(ROOT, "configs", "hetero-h100-a100.toml")) as f:
        check(toml.strip() == f.read().strip(), "hetero: config is configs/hetero-h100-a100.toml verbatim")
    for name, d in deps.items():
        c = container(d)
        check(arg_after(c["args"], "--config") == "/etc/genie/config/genie.toml"
              and any(m["name"] == "config" for m in c["volumeMounts"]),
              f"hetero: {name} reads the plan from the ConfigMap")
    if binary:
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write(toml)
        r = subprocess.run([binary, "plan", "explain", "--config", f.name], capture_output=True, text=True)
        os.unlink(f.name)
        check(r.returncode == 0 and "H100" in r.stdout and "A100" in r.stdout,
              "hetero: `genie plan explain` compiles the chart's config (pools H100 and A100)")
        if r.returncode != 0:
            print(r.stderr[-2000:])
    sms = by_kind(docs, "ServiceMonitor")
    check(len(sms) == 3 and all(
        s["apiVersion"] == "monitoring.coreos.com/v1"
        and s["spec"]["endpoints"][0]["port"] == "http" and s["spec"]["endpoints"][0]["path"] == "/metrics"
        and s["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] in ("gateway", "prefill", "decode")
        for s in sms.values()), f"hetero: a ServiceMonitor per component ({sorted(sms)})")
    check(deps["genie-prefill"]["spec"]["template"]["spec"].get("initContainers") is None
          and any(v.get("persistentVolumeClaim", {}).get("claimName") == "genie-models"
                  for v in deps["genie-prefill"]["spec"]["template"]["spec"]["volumes"]),
          "hetero: the model comes from a shared PVC, not a fetch per pod")

    # --- options users turn on -------------------------------------------------------
    opts = copy.deepcopy(load_values("values.yaml"))
    opts["tls"] = {"enabled": True, "secretName": "genie-tls"}
    opts["apiKey"] = {"existingSecret": "genie-api", "key": "api-key"}
    opts["clusterSecret"] = {"existingSecret": "my-cluster-secret", "key": "secret"}
    opts["gateway"]["service"]["type"] = "LoadBalancer"
    opts["decode"]["autoscaling"]["enabled"] = True
    docs = render(opts, name="prod")
    validate(docs, "tls+keys")
    deps = common_assertions(docs, "tls+keys", release="prod-genie")
    check(not by_kind(docs, "Secret"), "tls+keys: an existing cluster secret is used, none made")
    gw = container(deps["prod-genie-gateway"])
    key_env = [e for e in gw["env"] if e["name"] == "GENIE_API_KEY"]
    check(key_env and key_env[0]["valueFrom"]["secretKeyRef"]["name"] == "genie-api"
          and not any("--api-key" in a for a in gw["args"]),
          "tls+keys: the API key comes from a Secret, not the command line")
    check(gw["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
          and arg_after(gw["args"], "--tls-ca-file") == "/etc/genie/tls/ca.crt",
          "tls+keys: HTTPS probes and every role trusts the CA")
    check(arg_after(container(deps["prod-genie-decode"])["args"], "--gateway").startswith("https://"),
          "tls+keys: workers register over HTTPS")
    check(by_kind(docs, "Service")["prod-genie"]["spec"]["type"] == "LoadBalancer",
          "tls+keys: only the gateway's public Service is a LoadBalancer")
    hpa = by_kind(docs, "HorizontalPodAutoscaler").get("prod-genie-decode")
    check(hpa is not None and hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "genie_num_requests_running",
          "tls+keys: the decode HPA reads each worker's running batch")

    # --- values.schema.json refuses bad values --------------------------------------
    for what, patch in [
        ("kvTransport: udp", lambda v: v.update(kvTransport="udp")),
        ("prefill.replicas: -1", lambda v: v["prefill"].update(replicas=-1)),
        ("gateway.service.type: External", lambda v: v["gateway"]["service"].update(type="External")),
        ("decode.hardware with a space", lambda v: v["decode"].update(hardware="a 100")),
    ]:
        v = copy.deepcopy(load_values("values.yaml"))
        patch(v)
        try:
            render(v)
            check(False, f"schema refuses {what}")
        except helm_python.HelmError as e:
            check("values don't meet the specifications of the schema" in str(e) or "schema" in str(e).lower(),
                  f"schema refuses {what}")
    v = copy.deepcopy(load_values("values.yaml"))
    v["tls"] = {"enabled": True, "secretName": ""}
    try:
        render(v)
        check(False, "tls.enabled without a secretName is refused")
    except helm_python.HelmError as e:
        check("tls.secretName is required" in str(e), "tls.enabled without a secretName is refused")

    print(f"\n{len(failures)} failed" if failures else "\nchart: every check passed")
    sys.exit(1 if failures else 0)


def helm_sdk_version():
    import helm_python
    return helm_python.helm_sdk_version()


if __name__ == "__main__":
    main()
