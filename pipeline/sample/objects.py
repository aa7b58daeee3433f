"""Kubernetes object bodies for requestObject / responseObject, shaped like the real API.

Only the fields detectors read or that make an object recognisable are filled in; a body is a
plain dict so orjson serializes it directly.
"""

from __future__ import annotations

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
POD_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def meta(name: str, ns: str = "", uid: str = "", rv: str = "", created: str = "", **more) -> dict:
    m = {"name": name}
    if ns:
        m["namespace"] = ns
    if uid:
        m["uid"] = uid
    if rv:
        m["resourceVersion"] = rv
    if created:
        m["creationTimestamp"] = created
    m.update(more)
    return m


def lease(name: str, ns: str, uid: str, rv: str, created: str, holder: str, seconds: int, renew: str,
          owner: dict | None = None, acquire: str = "", transitions: int | None = None) -> dict:
    m = meta(name, ns, uid, rv, created)
    if owner:
        m["ownerReferences"] = [owner]
    spec = {"holderIdentity": holder, "leaseDurationSeconds": seconds}
    if acquire:
        spec["acquireTime"] = acquire
    spec["renewTime"] = renew
    if transitions is not None:
        spec["leaseTransitions"] = transitions
    return {"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", "metadata": m, "spec": spec}


def node_status_patch(heartbeat: str) -> dict:
    types = ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
    return {"status": {"$setElementOrder/conditions": [{"type": t} for t in types],
                       "conditions": [{"lastHeartbeatTime": heartbeat, "type": t} for t in types]}}


def pod_status_patch(uid: str, phase: str, ip: str, when: str) -> dict:
    ready = "True" if phase == "Running" else "False"
    return {"metadata": {"uid": uid},
            "status": {"$setElementOrder/conditions": [{"type": t} for t in POD_CONDITIONS],
                       "conditions": [{"lastTransitionTime": when, "status": ready, "type": "Ready"},
                                      {"lastTransitionTime": when, "status": ready, "type": "ContainersReady"}],
                       "phase": phase, "podIP": ip, "podIPs": [{"ip": ip}]}}


def container(name: str, image: str, privileged: bool = False, command: list[str] | None = None,
              mounts: list[dict] | None = None, env_from: list[str] | None = None) -> dict:
    c = {"name": name, "image": image}
    if command:
        c["command"] = command
    if env_from:
        c["envFrom"] = [{"secretRef": {"name": s}} for s in env_from]
    c["resources"] = {"limits": {"cpu": "500m", "memory": "512Mi"}, "requests": {"cpu": "100m", "memory": "128Mi"}}
    c["volumeMounts"] = list(mounts or []) + [{"name": "kube-api-access", "readOnly": True, "mountPath": SA_MOUNT}]
    c["terminationMessagePath"] = "/dev/termination-log"
    c["terminationMessagePolicy"] = "File"
    c["imagePullPolicy"] = "IfNotPresent"
    c["securityContext"] = {"privileged": True, "allowPrivilegeEscalation": True} if privileged else \
        {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    return c


def pod_spec(sa: str, containers: list[dict], volumes: list[dict] | None = None, host_network: bool = False,
             host_pid: bool = False, host_ipc: bool = False, node_name: str = "", tolerate_all: bool = False) -> dict:
    vols = list(volumes or []) + [{"name": "kube-api-access", "projected": {
        "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace",
                                                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}],
        "defaultMode": 420}}]
    spec = {"volumes": vols, "containers": containers, "restartPolicy": "Always", "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst", "serviceAccountName": sa, "serviceAccount": sa}
    if node_name:
        spec["nodeName"] = node_name
    if host_network:
        spec["hostNetwork"] = True
    if host_pid:
        spec["hostPID"] = True
    if host_ipc:
        spec["hostIPC"] = True
    spec["securityContext"] = {}
    spec["schedulerName"] = "default-scheduler"
    spec["tolerations"] = [{"operator": "Exists"}] if tolerate_all else [
        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
    spec["priority"] = 0
    spec["enableServiceLinks"] = True
    spec["preemptionPolicy"] = "PreemptLowerPriority"
    return spec


def pod(m: dict, spec: dict) -> dict:
    return {"kind": "Pod", "apiVersion": "v1", "metadata": m, "spec": spec, "status": {}}


def with_server_fields(obj: dict, uid: str, rv: str, created: str) -> dict:
    """The object as the API server returns it after a create: uid, resourceVersion, timestamp."""
    m = dict(obj.get("metadata", {}))
    m["uid"] = uid
    m["resourceVersion"] = rv
    m["creationTimestamp"] = created
    out = dict(obj)
    out["metadata"] = m
    return out


def delete_options(propagation: str = "Background", grace: int | None = None, uid: str = "") -> dict:
    d = {"kind": "DeleteOptions", "apiVersion": "v1"}
    if grace is not None:
        d["gracePeriodSeconds"] = grace
    if uid:
        d["preconditions"] = {"uid": uid}
    else:
        d["propagationPolicy"] = propagation
    return d


def status_update(kind: str, group_version: str, name: str, ns: str, status: dict) -> dict:
    """Body of a controller's write to an object's status subresource."""
    return {"kind": kind, "apiVersion": group_version, "metadata": meta(name, ns), "status": status}


def pod_binding(name: str, ns: str, uid: str, node: str) -> dict:
    return {"kind": "Binding", "apiVersion": "v1", "metadata": {"name": name, "namespace": ns, "uid": uid},
            "target": {"kind": "Node", "name": node}}


def replica_set(name: str, ns: str, replicas: int, labels: dict, template_spec: dict, owner: dict | None = None) -> dict:
    """The ReplicaSet a Deployment's controller writes: the Deployment's pod template, copied."""
    m = meta(name, ns, labels=labels, **({"ownerReferences": [owner]} if owner else {}))
    return {"kind": "ReplicaSet", "apiVersion": "apps/v1", "metadata": m,
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": template_spec}}}


def controller_ref(kind: str, group_version: str, name: str, uid: str) -> dict:
    """metadata.ownerReferences entry a controller writes on the objects it makes (a CronJob's Jobs,
    a Job's Pods, a Deployment's ReplicaSets)."""
    return {"apiVersion": group_version, "kind": kind, "name": name, "uid": uid, "controller": True, "blockOwnerDeletion": True}


def endpoint_slice(service: str, ns: str, ips: list[str]) -> dict:
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": meta(service, ns),
            "addressType": "IPv4", "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips]}


def image_spec(container_name: str, image: str) -> dict:
    """The pod-template part of an apply that pins a container image."""
    return {"template": {"spec": {"containers": [{"name": container_name, "image": image}]}}}


def status_success(kind: str, name: str, uid: str, group: str = "") -> dict:
    details = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["uid"] = uid
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details}


def binding(kind: str, name: str, role_kind: str, role: str, subjects: list[dict], ns: str = "") -> dict:
    return {"kind": kind, "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": meta(name, ns),
            "subjects": subjects, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role}}


def subject(kind: str, name: str, ns: str = "") -> dict:
    if kind == "ServiceAccount":
        return {"kind": kind, "name": name, "namespace": ns}
    return {"kind": kind, "apiGroup": "rbac.authorization.k8s.io", "name": name}


def role(kind: str, name: str, rules: list[dict], ns: str = "") -> dict:
    return {"kind": kind, "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": meta(name, ns), "rules": rules}


def rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def restart_patch(when: str) -> dict:
    return {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": when}}}}}


def image_patch(container_name: str, image: str) -> dict:
    return {"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": container_name}],
                                           "containers": [{"image": image, "name": container_name}]}}}}


def scale_status(replicas: int, selector: str) -> dict:
    return {"kind": "Scale", "apiVersion": "autoscaling/v1", "spec": {"replicas": replicas},
            "status": {"replicas": replicas, "selector": selector}}


def csr(name: str, request_b64: str, signer: str, usages: list[str], expiration: int | None = None) -> dict:
    spec = {"request": request_b64, "signerName": signer, "usages": usages}
    if expiration:
        spec["expirationSeconds"] = expiration
    return {"kind": "CertificateSigningRequest", "apiVersion": "certificates.k8s.io/v1", "metadata": meta(name), "spec": spec}


def csr_stored(body: dict, uid: str, rv: str, created: str, requester: dict) -> dict:
    """A CSR as the API server stores it: server fields, and spec.username/groups set from the
    authenticated requester (``requester``: the audit event's user), whatever the client sent."""
    out = stored(body, uid, rv, created)
    out["spec"] = {**body["spec"], "username": requester.get("username", ""), "groups": list(requester.get("groups", []))}
    return out


def csr_approval(csr_object: dict, reason: str, message: str) -> dict:
    """The body of a certificatesigningrequests/approval update: the whole CSR as read from the
    server (``kubectl certificate approve`` gets it, adds the condition and puts it back)."""
    return {**csr_object, "status": {"conditions": [{"type": "Approved", "status": "True", "reason": reason, "message": message}]}}


def webhook_config(kind: str, name: str, hook: str, client: dict, failure: str, resources: list[str],
                   operations: list[str], ns_selector: dict | None = None) -> dict:
    wh = {"name": hook, "clientConfig": client,
          "rules": [{"operations": operations, "apiGroups": ["*"] if resources == ["*"] else [""],
                     "apiVersions": ["*"] if resources == ["*"] else ["v1"], "resources": resources, "scope": "*"}],
          "failurePolicy": failure, "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 10}
    if ns_selector is not None:
        wh["namespaceSelector"] = ns_selector
    if kind == "MutatingWebhookConfiguration":
        wh["reinvocationPolicy"] = "Never"
    return {"kind": kind, "apiVersion": "admissionregistration.k8s.io/v1", "metadata": meta(name), "webhooks": [wh]}


def ca_bundle_patch(hook: str, bundle: str) -> dict:
    return {"webhooks": [{"name": hook, "clientConfig": {"caBundle": bundle}}]}


def workload(kind: str, name: str, ns: str, template_spec: dict, labels: dict, schedule: str = "", owner: dict | None = None) -> dict:
    group_version = "batch/v1" if kind in ("CronJob", "Job") else "apps/v1"
    template = {"metadata": {"labels": labels}, "spec": template_spec}
    if kind == "CronJob":
        body = {"schedule": schedule, "concurrencyPolicy": "Allow",
                "jobTemplate": {"spec": {"template": template}}}
    elif kind == "Job":
        body = {"backoffLimit": 6, "template": template}
    else:
        body = {"selector": {"matchLabels": labels}, "template": template}
    m = meta(name, ns, labels=labels, **({"ownerReferences": [owner]} if owner else {}))
    return {"kind": kind, "apiVersion": group_version, "metadata": m, "spec": body}


def apply_patch(kind: str, group_version: str, name: str, ns: str, spec: dict, labels: dict | None = None) -> dict:
    m = meta(name, ns)
    if labels:
        m["labels"] = labels
    return {"apiVersion": group_version, "kind": kind, "metadata": m, "spec": spec}


def stored(body: dict, uid: str, rv: str, created: str, generation: int | None = None) -> dict:
    """The object as the API server stores and returns it after a write: `body` with uid,
    resourceVersion, creationTimestamp (and generation for objects that carry one)."""
    out = with_server_fields(body, uid, rv, created)
    if generation is not None:
        out["metadata"]["generation"] = generation
    return out


def deployment(name: str, ns: str, replicas: int, template_spec: dict, labels: dict,
               template_annotations: dict | None = None) -> dict:
    """A Deployment with its pod template (the body a write of any patch style stores)."""
    body = workload("Deployment", name, ns, template_spec, labels)
    body["spec"]["replicas"] = replicas
    if template_annotations:
        body["spec"]["template"]["metadata"]["annotations"] = dict(template_annotations)
    return body


def ephemeral_container(name: str, image: str, target: str, privileged: bool = False) -> dict:
    """A `kubectl debug` container: `--profile=sysadmin` makes it privileged, the default
    (legacy/general) profile adds nothing."""
    c = {"name": name, "image": image, "resources": {}, "terminationMessagePath": "/dev/termination-log",
         "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent", "stdin": True, "tty": True,
         "targetContainerName": target}
    if privileged:
        c["securityContext"] = {"privileged": True}
    return c


def service(name: str, ns: str, selector: dict, ports: list[dict], kind: str = "ClusterIP",
            annotations: dict | None = None) -> dict:
    m = meta(name, ns, labels={"app": selector.get("app", name)})
    if annotations:
        m["annotations"] = dict(annotations)
    spec = {"ports": ports, "selector": selector, "type": kind}
    return {"kind": "Service", "apiVersion": "v1", "metadata": m, "spec": spec}


def service_stored(body: dict, uid: str, rv: str, created: str, cluster_ip: str, node_ports: list[int]) -> dict:
    """A Service as stored: cluster IP assigned and, for NodePort/LoadBalancer, a node port per port."""
    out = stored(body, uid, rv, created)
    spec = dict(out["spec"])
    spec["clusterIP"], spec["clusterIPs"] = cluster_ip, [cluster_ip]
    spec["ipFamilies"], spec["ipFamilyPolicy"] = ["IPv4"], "SingleStack"
    spec["sessionAffinity"] = "None"
    if spec["type"] in ("NodePort", "LoadBalancer"):
        spec["ports"] = [{**p, "nodePort": n} for p, n in zip(spec["ports"], node_ports)]
        spec["externalTrafficPolicy"] = "Cluster"
    else:
        spec["internalTrafficPolicy"] = "Cluster"
    out["spec"] = spec
    out["status"] = {"loadBalancer": {}}
    return out


def ingress(name: str, ns: str, host: str, service_name: str, port: int, tls_secret: str = "",
            annotations: dict | None = None) -> dict:
    m = meta(name, ns)
    if annotations:
        m["annotations"] = dict(annotations)
    backend = {"service": {"name": service_name, "port": {"number": port}}}
    spec = {"ingressClassName": "nginx",
            "rules": [{"host": host, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}]}
    if tls_secret:
        spec["tls"] = [{"hosts": [host], "secretName": tls_secret}]
    return {"kind": "Ingress", "apiVersion": "networking.k8s.io/v1", "metadata": m, "spec": spec}


def configmap(name: str, ns: str, data: dict) -> dict:
    return {"kind": "ConfigMap", "apiVersion": "v1", "metadata": meta(name, ns), "data": data}


def service_account(name: str, ns: str) -> dict:
    return {"kind": "ServiceAccount", "apiVersion": "v1", "metadata": meta(name, ns)}


def corefile(forward: str = "/etc/resolv.conf", rewrite: str = "") -> str:
    """CoreDNS's Corefile as EKS ships it, optionally with an added rewrite rule or upstream."""
    extra = f"    {rewrite}\n" if rewrite else ""
    return (".:53 {\n    errors\n    health {\n        lameduck 5s\n      }\n    ready\n" + extra +
            "    kubernetes cluster.local in-addr.arpa ip6.arpa {\n      pods insecure\n      fallthrough in-addr.arpa ip6.arpa\n    }\n"
            f"    prometheus :9153\n    forward . {forward}\n    cache 30\n    loop\n    reload\n    loadbalance\n}}\n")
