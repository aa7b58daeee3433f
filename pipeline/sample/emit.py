"""Build `audit.k8s.io/v1` Event lines the way the EKS API server writes them.

One call to `Emitter.request` is one API request: it picks the audit level EKS's fixed
policy gives that request, derives the requestURI and objectRef from the same arguments so
they always agree, fills responseStatus and the authorization annotations, and appends one
serialized line per stage to `Emitter.out` as `(stageTimestamp in µs, line)`. Long-running
requests (watch, exec, attach, portforward) produce ResponseStarted and ResponseComplete;
requests with a bad credential produce the single ResponseStarted 401 event with an empty
user that the API server's failed-authentication filter writes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable
from urllib.parse import quote_plus

import orjson

US = 1_000_000
MINUTE = 60 * US
HOUR = 60 * MINUTE
DAY = 24 * HOUR

KNOWN_GROUPS = frozenset({
    "", "admissionregistration.k8s.io", "apiextensions.k8s.io", "apiregistration.k8s.io", "apps",
    "authentication.k8s.io", "authorization.k8s.io", "autoscaling", "batch", "certificates.k8s.io",
    "coordination.k8s.io", "discovery.k8s.io", "events.k8s.io", "flowcontrol.apiserver.k8s.io",
    "networking.k8s.io", "node.k8s.io", "policy", "rbac.authorization.k8s.io",
    "scheduling.k8s.io", "storage.k8s.io",
})
READ_VERBS = frozenset({"get", "list", "watch"})
STREAMING = frozenset({"exec", "attach", "portforward"})

Authorizer = Callable[[str, str, str, str, str, str], "str | None"]


@dataclass(slots=True)
class Actor:
    """A client as the audit log sees it: identity, connection addresses, user agent.

    `reason` is the authorization reason written on allowed requests when the caller does not
    decide; `authorize(verb, resource, subresource, namespace, name, group)` returns the allow reason
    or None (forbidden) for callers that let the actor's permissions decide.
    """

    username: str
    user: dict
    ips: list
    ua: str
    reason: str = ""
    authorize: Authorizer | None = None
    deny_suffix: str = ""

    def via(self, ips: list, ua: str | None = None) -> Actor:
        """The same identity connecting from other addresses (and maybe another client)."""
        return Actor(self.username, self.user, ips, ua or self.ua, self.reason, self.authorize,
                     self.deny_suffix)


def api_path(resource: str, ns: str = "", name: str = "", sub: str = "", group: str = "",
             version: str = "v1") -> str:
    """The REST path of a resource request, as kubectl and client-go build it."""
    base = f"/apis/{group}/{version}" if group else "/api/v1"
    if resource == "namespaces":
        p = f"{base}/namespaces/{name}" if name else f"{base}/namespaces"
    else:
        p = f"{base}/namespaces/{ns}/{resource}" if ns else f"{base}/{resource}"
        if name:
            p = f"{p}/{name}"
    return f"{p}/{sub}" if sub else p


def policy_level(verb: str, resource: str, sub: str, group: str, ns: str, name: str) -> str:
    """The level EKS's fixed audit policy logs a request at.

    Secrets, configmaps, token requests and tokenreviews are Metadata only (their bodies are
    sensitive), except writes to kube-system/aws-auth which are RequestResponse; reads of
    built-in groups log the request; writes to built-in groups log request and response;
    everything else (non-resource URLs, custom resources) is Metadata.
    """
    if not resource or group not in KNOWN_GROUPS:
        return "Metadata"
    if group == "" and resource in ("secrets", "configmaps"):
        if resource == "configmaps" and name == "aws-auth" and ns == "kube-system" and verb in ("update", "patch", "delete"):
            return "RequestResponse"
        return "Metadata"
    if resource == "tokenreviews" or (resource == "serviceaccounts" and sub == "token"):
        return "Metadata"
    if verb in READ_VERBS:
        return "Request"
    return "RequestResponse"


def forbidden_message(username: str, verb: str, resource: str, sub: str, group: str, ns: str,
                      name: str, uri: str, suffix: str = "") -> str:
    """The Status message the RBAC authorizer's denial carries."""
    if not resource:
        return f'forbidden: User "{username}" cannot {verb} path "{uri.split("?")[0]}"{suffix}'
    kind = f"{resource}.{group}" if group else resource
    subject = f'{kind} "{name}"' if name else kind
    rs = f"{resource}/{sub}" if sub else resource
    scope = f'in the namespace "{ns}"' if ns else "at the cluster scope"
    return (f'{subject} is forbidden: User "{username}" cannot {verb} resource "{rs}" '
            f'in API group "{group}" {scope}{suffix}')


class Emitter:
    """Serializes audit events into `out`; owns the seeded stream for audit IDs and latencies."""

    def __init__(self, seed: int, rv_start: int = 0):
        self.rng = random.Random(seed)
        self.out: list[tuple[int, bytes]] = []
        self.rv = rv_start or self.rng.randrange(180_000_000, 240_000_000)
        self._seconds: dict[int, str] = {}
        self._allow: dict[str, dict] = {}
        self._ok = {c: {"metadata": {}, "code": c} for c in (200, 201, 101)}
        self._forbid = {"authorization.k8s.io/decision": "forbid", "authorization.k8s.io/reason": ""}

    def drain(self) -> list[tuple[int, bytes]]:
        out, self.out = self.out, []
        return out

    def ts(self, t: int) -> str:
        """RFC 3339 UTC with microseconds, as the API server formats metav1.MicroTime."""
        s, us = divmod(t, US)
        p = self._seconds.get(s)
        if p is None:
            if len(self._seconds) > 200_000:
                self._seconds.clear()
            p = datetime.fromtimestamp(s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.")
            self._seconds[s] = p
        return f"{p}{us:06d}Z"

    def uid(self) -> str:
        """A version-4 UUID drawn from the seeded stream (auditIDs, object uids)."""
        x = self.rng.getrandbits(128) & ~(0xF << 76) & ~(0x3 << 62) | (0x4 << 76) | (0x2 << 62)
        h = "%032x" % x
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def next_rv(self) -> str:
        self.rv += 1 + (self.rng.getrandbits(4))
        return str(self.rv)

    def allow(self, reason: str) -> dict:
        a = self._allow.get(reason)
        if a is None:
            a = self._allow[reason] = {"authorization.k8s.io/decision": "allow",
                                       "authorization.k8s.io/reason": reason}
        return a

    def request(self, t: int, actor: Actor, verb: str, resource: str = "", ns: str = "",
                name: str = "", sub: str = "", group: str = "", version: str = "v1",
                query: str = "", code: int | None = 200, req=None, resp=None,
                level: str | None = None, reason: str | None = None, duration: int = 0,
                uri: str | None = None, impersonate: dict | None = None,
                annotations: dict | None = None, message: str = "") -> str:
        """Write one request; return its auditID.

        `code=None` lets `actor.authorize` decide between allowed (201 for create, 101 for
        exec/attach/portforward, else 200) and 403. `duration` (µs) makes the request
        long-running: a ResponseStarted event, then ResponseComplete `duration` later.
        """
        rng = self.rng
        if uri is None:
            uri = api_path(resource, ns, name, sub, group, version) if resource else "/"
            if query:
                uri = f"{uri}?{query}"
        if code is None:
            reason = actor.authorize(verb, resource, sub, ns, name, group) if actor.authorize else actor.reason
            if reason is None:
                code = 403
            elif sub in STREAMING:
                code = 101
            else:
                code = 201 if verb == "create" else 200
        if level is None:
            level = policy_level(verb, resource, sub, group, ns, name)
        lat = 700 + int(rng.random() ** 3 * 45_000)
        aid = self.uid()
        ev = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": level, "auditID": aid,
              "stage": "ResponseComplete", "requestURI": uri, "verb": verb, "user": actor.user}
        if impersonate is not None:
            ev["impersonatedUser"] = impersonate
        ev["sourceIPs"] = actor.ips
        ev["userAgent"] = actor.ua
        if resource:
            ref = {"resource": resource}
            if resource == "namespaces" and name:
                ref["namespace"] = name
            elif ns:
                ref["namespace"] = ns
            if name:
                ref["name"] = name
            if group:
                ref["apiGroup"] = group
            ref["apiVersion"] = version
            if sub:
                ref["subresource"] = sub
            ev["objectRef"] = ref
        if code < 300:
            ev["responseStatus"] = self._ok.get(code) or {"metadata": {}, "code": code}
            if level != "Metadata":
                if req is not None:
                    ev["requestObject"] = req
                if resp is not None and level == "RequestResponse":
                    ev["responseObject"] = resp
            ann = self.allow(actor.reason if reason is None else reason)
        elif code == 403:
            msg = message or forbidden_message(actor.username, verb, resource, sub, group, ns, name, uri,
                                              actor.deny_suffix)
            ev["responseStatus"] = self._status(msg, "Forbidden", 403, resource, group, name)
            ann = self._forbid
        else:
            reason_text = {404: "NotFound", 409: "Conflict", 422: "Invalid"}.get(code, "InternalError")
            kind = f"{resource}.{group}" if group else resource
            msg = message or f'{kind} "{name}" not found'
            ev["responseStatus"] = self._status(msg, reason_text, code, resource, group, name)
            ann = self.allow(actor.reason if reason is None else reason)
        if annotations:
            ann = {**ann, **annotations}
        received = self.ts(t)
        ev["requestReceivedTimestamp"] = received
        out = self.out
        if duration and code < 300:
            ev["stage"] = "ResponseStarted"
            ev["stageTimestamp"] = self.ts(t + lat)
            ev["annotations"] = ann
            out.append((t + lat, orjson.dumps(ev)))
            ev["stage"] = "ResponseComplete"
            end = t + duration
        else:
            end = t + lat
        ev["stageTimestamp"] = self.ts(end)
        ev["annotations"] = ann
        out.append((end, orjson.dumps(ev)))
        return aid

    def unauthenticated(self, t: int, ips: list, ua: str, verb: str, resource: str = "",
                        ns: str = "", name: str = "", group: str = "", version: str = "v1",
                        query: str = "", uri: str | None = None) -> str:
        """A request whose bearer token failed authentication (HTTP 401).

        The API server writes these from its failed-authentication filter: one
        ResponseStarted event, an empty user, no authorization annotations.
        """
        if uri is None:
            uri = api_path(resource, ns, name, "", group, version) if resource else "/"
            if query:
                uri = f"{uri}?{query}"
        aid = self.uid()
        ev = {"kind": "Event", "apiVersion": "audit.k8s.io/v1",
              "level": policy_level(verb, resource, "", group, ns, name), "auditID": aid,
              "stage": "ResponseStarted", "requestURI": uri, "verb": verb, "user": {},
              "sourceIPs": ips, "userAgent": ua}
        if resource:
            ref = {"resource": resource}
            if ns:
                ref["namespace"] = ns
            if name:
                ref["name"] = name
            if group:
                ref["apiGroup"] = group
            ref["apiVersion"] = version
            ev["objectRef"] = ref
        ev["responseStatus"] = {"metadata": {}, "message": "Authentication failed, attempted: bearer", "code": 401}
        end = t + 300 + int(self.rng.random() * 2000)
        ev["requestReceivedTimestamp"] = self.ts(t)
        ev["stageTimestamp"] = self.ts(end)
        self.out.append((end, orjson.dumps(ev)))
        return aid

    @staticmethod
    def _status(msg: str, reason: str, code: int, resource: str, group: str, name: str) -> dict:
        st = {"metadata": {}, "status": "Failure", "message": msg, "reason": reason}
        if resource:
            details = {"name": name} if name else {}
            if group:
                details["group"] = group
            details["kind"] = resource
            st["details"] = details
        st["code"] = code
        return st


def exec_query(command: list[str], container: str, stdin: bool = False, tty: bool = False) -> str:
    """The query string kubectl sends for `kubectl exec` (SPDY, verb create): Go's
    url.Values encoding, keys sorted, space as '+' and '/' as %2F."""
    parts = [f"command={quote_plus(c, safe='')}" for c in command]
    parts.append(f"container={container}")
    if not tty:
        parts.append("stderr=true")
    if stdin:
        parts.append("stdin=true")
    parts.append("stdout=true")
    if tty:
        parts.append("tty=true")
    return "&".join(parts)
