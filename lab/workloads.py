"""The recipe's workloads: MetalLB (layer 2), the nginx Deployment and its Services.

Everything here is built as data and dumped with PyYAML; every address comes from the
lab configuration, and the LoadBalancer addresses are derived from the MetalLB ranges in
one place (:func:`lb_addresses`). Two profiles:

``seed-2020`` (Kubernetes 1.17, MetalLB 0.9)
    Services choose their family with the alpha field ``spec.ipFamily`` (singular);
    dual-stack Services do not exist. MetalLB is configured by the ConfigMap
    ``metallb-system/config`` with one layer 2 pool per family; the IPv6 LoadBalancer
    asks for its address with ``spec.loadBalancerIP`` (and names the IPv6 pool).
    nginx spreads with a *preferred* pod anti-affinity (topologySpreadConstraints is
    alpha in 1.17).

``current`` (Kubernetes 1.36, MetalLB 0.16)
    Services use ``ipFamilyPolicy``/``ipFamilies``; MetalLB is configured by one
    ``IPAddressPool`` holding both ranges and an ``L2Advertisement``; LoadBalancers ask
    for their addresses with the ``metallb.io/loadBalancerIPs`` annotation. A fourth
    Service, ``my-nginx-svc-dual``, is a RequireDualStack LoadBalancer.

nginx ships its own ``default.conf`` in a ConfigMap, listening on ``0.0.0.0:80`` and
``[::]:80`` (the official image's entrypoint only adds the IPv6 listen to its stock
file); the page names the pod (downward API → ``index.html`` written by an init
container), ``/client`` answers the client address nginx saw, and the access log starts
with ``$remote_addr`` (nginx's ``combined`` format plus the server address and pod).

The steps :func:`deploy_metallb` and :func:`deploy_workloads` apply each document set
only when its content differs from the one recorded in the lab state, then wait.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import secrets
import time
from typing import Dict, List, Optional, Sequence, Tuple

import yaml

from . import nodeenv, waits
from .config import AddressRange, LabConfig
from .context import Context
from .errors import ConfigError, StepError

NAMESPACE = "default"  #: where nginx and its Services live (the recipe's `kubectl get all`)
METALLB_NAMESPACE = "metallb-system"
APP = "my-nginx"
REPLICAS = 3
PORT = 80
REMOTE_MANIFEST_DIR = f"{nodeenv.REMOTE_DIR}/manifests"
FETCH = nodeenv.FETCH

SVC_IPV4 = "my-nginx-svc-ipv4"
SVC_IPV6 = "my-nginx-svc-ipv6"
SVC_IPV6_LOCAL = "my-nginx-svc-ipv6-local"
SVC_DUAL = "my-nginx-svc-dual"

#: MetalLB >= 0.14.9 annotation prefix (``metallb.universe.tf/`` is deprecated but still read).
ANNOTATION_LB_IPS = "metallb.io/loadBalancerIPs"
#: MetalLB 0.9's pool annotation (0.9 knows only the ``metallb.universe.tf/`` prefix).
ANNOTATION_POOL_09 = "metallb.universe.tf/address-pool"

#: Order in which the document sets are applied, and the file each is rendered to.
SET_FILES = {
    "metallb-config": "metallb-config.yaml",
    "nginx": "nginx.yaml",
    "services": "services.yaml",
}
STATE_PREFIX = "workloads.applied."

LABELS = {"app.kubernetes.io/part-of": "dslab"}

# Injectable for tests.
_clock = time.monotonic
_sleep = time.sleep
POLL_SECONDS = 5


def _dual_stack_services(cfg: LabConfig) -> bool:
    """True when the profile's Kubernetes has dual-stack Services (1.20+; 1.17 has not)."""
    return not cfg.profile.dual_stack_feature_gate


def _legacy(cfg: LabConfig) -> bool:
    """True for the 1.17 / MetalLB 0.9 flavour of the manifests."""
    return cfg.profile.metallb_version.startswith("0.9") or cfg.profile.kubernetes_minor == "1.17"


# --------------------------------------------------------------------------- addresses


def _size(rng: Optional[AddressRange]) -> int:
    return 0 if rng is None else int(rng.last) - int(rng.first) + 1


def lb_needs(cfg: LabConfig) -> Dict[int, List[str]]:
    """Per family, the LoadBalancer Services that take an address from that family's range."""
    needs: Dict[int, List[str]] = {4: [], 6: [SVC_IPV6_LOCAL]}
    if _dual_stack_services(cfg):
        needs[4].append(SVC_DUAL)
        needs[6].append(SVC_DUAL)
    return needs


def lb_addresses(cfg: LabConfig) -> Dict[str, Tuple]:
    """Service name → the LoadBalancer addresses it asks for, IPv4 first.

    Addresses are handed out from the start of each MetalLB range, in :func:`lb_needs`
    order. Call only for a configuration without :func:`problems`.
    """
    out: Dict[str, list] = {SVC_IPV6_LOCAL: []}
    if _dual_stack_services(cfg):
        out[SVC_DUAL] = []
    for family, rng in ((4, cfg.metallb_ipv4_range), (6, cfg.metallb_ipv6_range)):
        for offset, name in enumerate(lb_needs(cfg)[family]):
            out.setdefault(name, []).append(rng.first + offset)
    return {name: tuple(sorted(addrs, key=lambda a: a.version)) for name, addrs in out.items()}


def endpoints(cfg: LabConfig) -> List[dict]:
    """Every address a client outside the cluster can reach nginx on: service, family, address, curl."""
    rows = [(SVC_IPV4, cfg.external_ipv4, "externalIP"), (SVC_IPV6, cfg.external_ipv6, "externalIP")]
    for name, addrs in lb_addresses(cfg).items():
        rows.extend((name, addr, "LoadBalancer") for addr in addrs)
    out = []
    for name, addr, kind in rows:
        url = f"http://{addr}/" if addr.version == 4 else f"http://[{addr}]/"
        curl = f"curl http://{addr}/" if addr.version == 4 else f"curl -g http://[{addr}]/"
        out.append({"service": name, "family": f"IPv{addr.version}", "address": str(addr), "kind": kind,
                    "url": url, "curl": curl})
    return out


# --------------------------------------------------------------------------- checks


_RANGE_HINT = {4: "192.168.200.240-192.168.200.250", 6: "fd00:db1::240-fd00:db1::250"}


def problems(cfg: LabConfig) -> List[str]:
    """Render-time problems of the workloads, one line each naming the setting and the fix.

    :func:`lab.config.validate` already rejects, for every setting: MetalLB ranges or
    externalIPs outside the node network, on its network/gateway/broadcast address, inside
    the DHCP range, overlapping each other, or containing a node address; and empty or
    malformed ranges. Only what the workloads add is checked here: each family's range
    must exist and hold an address for every LoadBalancer that takes one from it.
    """
    found: List[str] = []
    for family, key in ((4, "metallb_ipv4_range"), (6, "metallb_ipv6_range")):
        rng = getattr(cfg, key)
        users = lb_needs(cfg)[family]
        if not users:
            continue
        if rng is None:
            found.append(f"lab.{key}: not set, but {', '.join(users)} needs an IPv{family} address from MetalLB; "
                         f"set it like {_RANGE_HINT[family]}")
        elif _size(rng) < len(users):
            found.append(f"lab.{key}: {rng} holds {_size(rng)} address(es) but {len(users)} LoadBalancer address(es) "
                         f"are needed ({', '.join(users)}); widen it to at least {len(users)} addresses")
    return found


def pin_problems(cfg: LabConfig) -> List[str]:
    """What the profile lacks to install MetalLB with checked downloads."""
    profile = cfg.profile
    found = []
    if not profile.metallb_manifests:
        found.append(f"profile {profile.name}: no MetalLB manifests pinned; set metallb_manifests in lab/profiles.py")
    for pin in profile.metallb_manifests:
        if not pin.url:
            found.append(f"profile {profile.name}: a MetalLB manifest has no URL; fix metallb_manifests in lab/profiles.py")
        elif not pin.sha256:
            found.append(f"profile {profile.name}: {pin.url} has no sha256; pin `curl -fsSL URL | sha256sum` "
                         f"in metallb_manifests of lab/profiles.py")
    if not profile.nginx_image:
        found.append(f"profile {profile.name}: no nginx image pinned; set nginx_image in lab/profiles.py")
    return found


def _require_no_problems(cfg: LabConfig) -> None:
    found = problems(cfg)
    if found:
        raise ConfigError(found)


# --------------------------------------------------------------------------- manifests


def _meta(name: str, namespace: Optional[str] = None, labels: Optional[dict] = None, annotations=None) -> dict:
    meta: dict = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = {**LABELS, **(labels or {})}
    if annotations:
        meta["annotations"] = dict(annotations)
    return meta


def metallb_config(cfg: LabConfig) -> List[dict]:
    """The MetalLB address configuration: ConfigMap (0.9) or IPAddressPool + L2Advertisement (0.13+)."""
    if _legacy(cfg):
        pools = []
        for family, rng in ((4, cfg.metallb_ipv4_range), (6, cfg.metallb_ipv6_range)):
            if rng is not None:
                pools.append({"name": pool_name(cfg, family), "protocol": "layer2", "addresses": [str(rng)]})
        text = yaml.safe_dump({"address-pools": pools}, sort_keys=False, default_flow_style=False)
        return [{
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta("config", METALLB_NAMESPACE),
            "data": {"config": text},
        }]
    addresses = [str(r) for r in (cfg.metallb_ipv4_range, cfg.metallb_ipv6_range) if r is not None]
    return [
        {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "IPAddressPool",
            "metadata": _meta(pool_name(cfg), METALLB_NAMESPACE),
            "spec": {"addresses": addresses, "autoAssign": True},
        },
        {
            "apiVersion": "metallb.io/v1beta1",
            "kind": "L2Advertisement",
            "metadata": _meta(f"{cfg.name}-l2", METALLB_NAMESPACE),
            "spec": {"ipAddressPools": [pool_name(cfg)]},
        },
    ]


def pool_name(cfg: LabConfig, family: Optional[int] = None) -> str:
    """Name of the MetalLB pool (one per family on 0.9, one for both on 0.13+)."""
    return f"{cfg.name}-pool" if family is None else f"{cfg.name}-ipv{family}"


NGINX_CONF = r"""# dslab: written by lab/workloads.py. Both families, explicitly: the official image's
# 10-listen-on-ipv6-by-default.sh only edits its stock default.conf, never this one.
log_format dslab '$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent '
                 '"$http_referer" "$http_user_agent" server=$server_addr pod=$hostname';

server {
    listen 0.0.0.0:80;
    listen [::]:80;
    server_name _;

    access_log /var/log/nginx/access.log dslab;
    add_header X-Pod-Name $hostname always;

    location / {
        root /usr/share/nginx/html;
        index index.html;
    }

    # The client address as nginx saw it (externalTrafficPolicy: Local keeps it).
    location = /client {
        default_type text/plain;
        return 200 "$remote_addr\n";
    }

    location = /healthz {
        access_log off;
        default_type text/plain;
        return 200 "ok\n";
    }
}
"""

# Written by the init container; ${...} are its environment (downward API).
INDEX_SCRIPT = r"""set -eu
cat > /work/index.html <<EOF
<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>my-nginx: ${POD_NAME}</title></head>
<body>
<h1>${POD_NAME}</h1>
<pre>
pod:       ${POD_NAME}
namespace: ${POD_NAMESPACE}
node:      ${NODE_NAME}
pod IPs:   ${POD_IPS}
</pre>
</body></html>
EOF
"""


def _env_field(name: str, path: str) -> dict:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def nginx(cfg: LabConfig) -> List[dict]:
    """The nginx ConfigMap and Deployment."""
    image = cfg.profile.nginx_image
    labels = {"app": APP}
    env = [
        _env_field("POD_NAME", "metadata.name"),
        _env_field("POD_NAMESPACE", "metadata.namespace"),
        _env_field("NODE_NAME", "spec.nodeName"),
        # status.podIPs (both families) is not used on 1.17, whose alpha dual-stack
        # cannot be relied on for it; there the page shows the primary (IPv4) pod IP.
        _env_field("POD_IPS", "status.podIP" if _legacy(cfg) else "status.podIPs"),
    ]
    pod_spec: dict = {
        "enableServiceLinks": False,
        "initContainers": [{
            "name": "index",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", INDEX_SCRIPT],
            "env": env,
            "volumeMounts": [{"name": "html", "mountPath": "/work"}],
        }],
        "containers": [{
            "name": "nginx",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORT}, "periodSeconds": 5},
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "128Mi"}},
            "volumeMounts": [
                {"name": "conf", "mountPath": "/etc/nginx/conf.d", "readOnly": True},
                {"name": "html", "mountPath": "/usr/share/nginx/html", "readOnly": True},
            ],
        }],
        "volumes": [
            {"name": "conf", "configMap": {"name": f"{APP}-conf"}},
            {"name": "html", "emptyDir": {}},
        ],
    }
    if _legacy(cfg):
        # topologySpreadConstraints is alpha (EvenPodsSpread) in 1.17: a preferred anti-affinity.
        pod_spec["affinity"] = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
            "weight": 100,
            "podAffinityTerm": {"labelSelector": {"matchLabels": dict(labels)},
                                "topologyKey": "kubernetes.io/hostname"},
        }]}}
    else:
        pod_spec["topologySpreadConstraints"] = [{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": dict(labels)},
            # The tainted control plane is not a domain: without this it would count as an
            # empty one and keep the third replica unschedulable.
            "nodeTaintsPolicy": "Honor",
        }]
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta(f"{APP}-conf", NAMESPACE, labels),
            "data": {"default.conf": NGINX_CONF},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _meta(APP, NAMESPACE, labels),
            "spec": {
                "replicas": REPLICAS,
                "selector": {"matchLabels": dict(labels)},
                "template": {"metadata": {"labels": {**LABELS, **labels}}, "spec": pod_spec},
            },
        },
    ]


def _service(cfg: LabConfig, name: str, families: Sequence[int], *, external: Optional[list] = None,
             load_balancer: Optional[tuple] = None) -> dict:
    spec: dict = {}
    annotations = {}
    if _legacy(cfg):
        if len(families) != 1:
            raise ValueError(f"{name}: Kubernetes {cfg.profile.kubernetes_version} has no dual-stack Services")
        spec["ipFamily"] = f"IPv{families[0]}"
    else:
        spec["ipFamilyPolicy"] = "SingleStack" if len(families) == 1 else "RequireDualStack"
        spec["ipFamilies"] = [f"IPv{f}" for f in families]
    spec["type"] = "LoadBalancer" if load_balancer else "ClusterIP"
    spec["selector"] = {"app": APP}
    spec["ports"] = [{"name": "http", "port": PORT, "targetPort": PORT, "protocol": "TCP"}]
    if external:
        spec["externalIPs"] = [str(a) for a in external]
    if load_balancer:
        spec["externalTrafficPolicy"] = "Local"
        if _legacy(cfg):
            spec["loadBalancerIP"] = str(load_balancer[0])
            annotations[ANNOTATION_POOL_09] = pool_name(cfg, families[0])
        else:
            annotations[ANNOTATION_LB_IPS] = ",".join(str(a) for a in load_balancer)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name, NAMESPACE, {"app": APP}, annotations),
        "spec": spec,
    }


def services(cfg: LabConfig) -> List[dict]:
    """The recipe's three Services, plus the dual-stack LoadBalancer where Kubernetes has one."""
    lbs = lb_addresses(cfg)
    docs = [
        _service(cfg, SVC_IPV4, [4], external=[cfg.external_ipv4]),
        _service(cfg, SVC_IPV6, [6], external=[cfg.external_ipv6]),
        _service(cfg, SVC_IPV6_LOCAL, [6], load_balancer=lbs[SVC_IPV6_LOCAL]),
    ]
    if _dual_stack_services(cfg):
        docs.append(_service(cfg, SVC_DUAL, [4, 6], load_balancer=lbs[SVC_DUAL]))
    return docs


def manifests(cfg: LabConfig) -> Dict[str, List[dict]]:
    """File name → the objects of that file. Raises :class:`ConfigError` on :func:`problems`."""
    _require_no_problems(cfg)
    return {
        SET_FILES["metallb-config"]: metallb_config(cfg),
        SET_FILES["nginx"]: nginx(cfg),
        SET_FILES["services"]: services(cfg),
    }


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing multi-line strings as literal blocks (readable ConfigMaps)."""


def _str(dumper, value):
    if "\n" in value:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", value)


_Dumper.add_representer(str, _str)


def dump(objects: Sequence[dict]) -> str:
    """Multi-document YAML of ``objects``."""
    return yaml.dump_all(list(objects), Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                         explicit_start=True)


def render_manifests(cfg: LabConfig) -> Dict[str, str]:
    """File name → multi-document YAML text."""
    return {name: dump(objs) for name, objs in manifests(cfg).items()}


def digest(text: str) -> str:
    """sha256 of a document set's text."""
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- steps


def _remaining(deadline: float) -> int:
    return max(1, int(deadline - _clock()))


def _apply_set(ctx: Context, key: str, text: str, deadline: float, *, retry_webhook: bool = False) -> bool:
    """``kubectl apply`` the set ``key`` unless the state records this exact content and the
    cluster has every object of it (new machines keep no objects but may keep the state).
    True if applied."""
    want = digest(text)
    if ctx.state.get(STATE_PREFIX + key) == want:
        if ctx.kubectl(["get", "-f", "-", "-o", "name"], input=text, check=False).ok:
            return False
    while True:
        result = ctx.kubectl(["apply", "-f", "-"], input=text, check=False, timeout=120)
        if result.ok:
            break
        message = (result.stderr or result.stdout).strip()
        # MetalLB 0.13+ validates its resources with a webhook that answers only once the
        # controller is serving; until then apply fails with "failed calling webhook".
        if retry_webhook and "webhook" in message and _clock() < deadline:
            _sleep(POLL_SECONDS)
            continue
        raise StepError(key, f"kubectl apply failed: {message[-300:]}", ctx.log_path)
    ctx.state.set(STATE_PREFIX + key, want)
    return True


def _wait_rollout(ctx: Context, namespace: str, what: str, deadline: float) -> None:
    waits.wait_rollout(ctx, namespace, what, _remaining(deadline))


def _install_key(cfg: LabConfig) -> str:
    return digest(json.dumps([[p.url, p.sha256] for p in cfg.profile.metallb_manifests]))


def _remote_path(cfg: LabConfig, url: str) -> str:
    return f"{REMOTE_MANIFEST_DIR}/metallb-v{cfg.profile.metallb_version}-{url.rstrip('/').rsplit('/', 1)[-1]}"


def memberlist_secret() -> dict:
    """A fresh memberlist Secret for MetalLB 0.9 (``openssl rand -base64 128`` equivalent)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta("memberlist", METALLB_NAMESPACE),
        "type": "Opaque",
        "stringData": {"secretkey": base64.b64encode(secrets.token_bytes(128)).decode()},
    }


def deploy_metallb(ctx: Context) -> None:
    """Install MetalLB from the pinned manifests, then its address configuration; wait until ready.

    Re-running with unchanged pins and configuration only reads (gets and waits).
    """
    cfg = ctx.cfg
    _require_no_problems(cfg)
    missing = pin_problems(cfg)
    if missing:
        raise StepError("metallb", "; ".join(missing), ctx.log_path)
    deadline = _clock() + cfg.ready_timeout
    node = cfg.control_plane.name

    install = _install_key(cfg)
    installed = ctx.state.get(STATE_PREFIX + "metallb-install") == install and ctx.kubectl(
        ["-n", METALLB_NAMESPACE, "get", "deployment/controller", "daemonset/speaker", "-o", "name"], check=False).ok
    if not installed:
        for pin in cfg.profile.metallb_manifests:
            dest = _remote_path(cfg, pin.url)
            ctx.runner.run(node, ["bash", FETCH, *pin.fetch_args(dest)])
            ctx.kubectl(["apply", "-f", dest], timeout=300)
        ctx.state.set(STATE_PREFIX + "metallb-install", install)

    if _legacy(cfg):
        # MetalLB 0.9's speakers need the memberlist key; created once, never rotated here.
        present = ctx.kubectl(["-n", METALLB_NAMESPACE, "get", "secret", "memberlist", "-o", "name"], check=False)
        if not present.ok:
            ctx.kubectl(["create", "-f", "-"], input=dump([memberlist_secret()]))

    _wait_rollout(ctx, METALLB_NAMESPACE, "deployment/controller", deadline)
    _wait_rollout(ctx, METALLB_NAMESPACE, "daemonset/speaker", deadline)
    _apply_set(ctx, "metallb-config", dump(metallb_config(cfg)), deadline, retry_webhook=not _legacy(cfg))


def _ingress_families(service: dict) -> set:
    families = set()
    for entry in (service.get("status", {}).get("loadBalancer", {}).get("ingress") or []):
        try:
            families.add(ipaddress.ip_address(entry.get("ip", "")).version)
        except ValueError:
            continue
    return families


def wait_load_balancers(ctx: Context, deadline: float) -> None:
    """Poll until every LoadBalancer Service has an ingress address of each of its families."""
    wanted = {name: {a.version for a in addrs} for name, addrs in lb_addresses(ctx.cfg).items()}
    pending = dict(wanted)
    while True:
        for name in list(pending):
            result = ctx.kubectl(["-n", NAMESPACE, "get", "service", name, "-o", "json"], check=False)
            if result.ok:
                try:
                    have = _ingress_families(json.loads(result.stdout))
                except ValueError:
                    have = set()
                if pending[name] <= have:
                    del pending[name]
        if not pending:
            return
        if _clock() >= deadline:
            name = sorted(pending)[0]
            fams = " and ".join(f"IPv{f}" for f in sorted(pending[name]))
            raise StepError("workloads", f"Service {NAMESPACE}/{name} has no {fams} LoadBalancer address after "
                            f"{ctx.cfg.ready_timeout} s; see `kubectl describe service {name}` and the "
                            f"metallb-system controller log", ctx.log_path)
        _sleep(POLL_SECONDS)


def deploy_workloads(ctx: Context) -> None:
    """Apply nginx and its Services (each set only when changed); wait for pods and LB addresses."""
    cfg = ctx.cfg
    _require_no_problems(cfg)
    deadline = _clock() + cfg.ready_timeout
    _apply_set(ctx, "nginx", dump(nginx(cfg)), deadline)
    _apply_set(ctx, "services", dump(services(cfg)), deadline)
    _wait_rollout(ctx, NAMESPACE, f"deployment/{APP}", deadline)
    wait_load_balancers(ctx, deadline)
