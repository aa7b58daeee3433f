"""Build `audit.k8s.io/v1` Event lines the way the EKS API server writes them.

One call to `Emitter.request` is one API request: it picks the audit level EKS's fixed
policy gives that request, derives the requestURI and objectRef from the same arguments so
they always agree, fills responseStatus and the authorization annotations, and writes one
serialized line per stage, indexed by its stageTimestamp in µs. Long-running
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
    cache: tuple | None = None

    def via(self, ips: list, ua: str | None = None) -> Actor:
        """The same identity connecting from other addresses (and maybe another client)."""
        return Actor(self.username, self.user, ips, ua or self.ua, self.reason, self.authorize,
                     self.deny_suffix)


def actor_fragment(actor: Actor) -> tuple:
    """The actor's user and sourceIPs, serialized once (they repeat in every event it makes)."""
    f = actor.cache
    if f is None:
        f = actor.cache = (orjson.Fragment(orjson.dumps(actor.user)), orjson.Fragment(orjson.dumps(actor.ips)))
    return f


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
    """Serializes audit events; owns the seeded stream for audit IDs and latencies.

    Lines are copied into one reusable buffer and indexed as (stageTimestamp, offset, length)
    rather than kept as a million small bytes objects: the buffer's memory stays mapped from
    hour to hour, which is what makes generation fast where page faults are expensive.
    """

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.buf = bytearray(1 << 20)
        self.pos = 0
        self.index: list[tuple[int, int, int]] = []
        self._uuids: list[str] = []
        self.rv = self.rng.randrange(180_000_000, 240_000_000)
        self._minutes: dict[int, str] = {}
        self._days: dict[int, str] = {}
        self._allow: dict[str, orjson.Fragment] = {}
        self._shapes: dict[tuple, tuple] = {}
        self._ok = {c: orjson.Fragment(orjson.dumps({"metadata": {}, "code": c})) for c in (200, 201, 101)}
        self._forbid = orjson.Fragment(orjson.dumps({"authorization.k8s.io/decision": "forbid",
                                                     "authorization.k8s.io/reason": ""}))

    def put(self, t: int, line: bytes) -> None:
        """Append one serialized event emitted at `t` (µs)."""
        n = len(line)
        pos = self.pos
        end = pos + n
        if end > len(self.buf):
            self.buf.extend(bytes(max(len(self.buf), n)))
        self.buf[pos:end] = line
        self.index.append((t, pos, n))
        self.pos = end

    def reset(self) -> None:
        """Forget written lines, keeping the buffer's memory."""
        self.pos = 0
        self.index = []

    def drain(self) -> list[tuple[int, bytes]]:
        """Written lines as (stageTimestamp, line), generation order; then reset."""
        buf = self.buf
        out = [(t, bytes(buf[p:p + n])) for t, p, n in self.index]
        self.reset()
        return out

    def ts(self, t: int) -> str:
        """RFC 3339 UTC with microseconds, as the API server formats metav1.MicroTime."""
        m, r = divmod(t, MINUTE)
        p = self._minutes.get(m) or self._prefix(m)
        return f"{p}{r // US:02d}.{r % US:06d}Z"

    def ts_s(self, t: int) -> str:
        """RFC 3339 UTC to the second, as metav1.Time (creationTimestamp) is formatted."""
        return self.ts(t - t % US)[:19] + "Z"

    def uid(self) -> str:
        """A version-4 UUID drawn from the seeded stream (auditIDs, object uids)."""
        pool = self._uuids
        if not pool:
            h = "%0*x" % (32 * 512, self.rng.getrandbits(128 * 512))
            v = "89ab89ab89ab89ab"
            pool.extend(f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-{v[int(h[i + 16], 16)]}{h[i + 17:i + 20]}-{h[i + 20:i + 32]}"
                        for i in range(32 * 511, -1, -32))
        return pool.pop()

    def next_rv(self) -> str:
        self.rv += 1 + (self.rng.getrandbits(4))
        return str(self.rv)

    def allow(self, reason: str) -> orjson.Fragment:
        """The annotations of an allowed request, serialized once per distinct reason."""
        a = self._allow.get(reason)
        if a is None:
            a = self._allow[reason] = orjson.Fragment(orjson.dumps(
                {"authorization.k8s.io/decision": "allow", "authorization.k8s.io/reason": reason}))
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
        key = (verb, resource, ns, name, sub, group, version)
        shape = self._shapes.get(key)
        if shape is None:
            shape = self._shape(key)
        path, ref, policy = shape
        if uri is None:
            uri = f"{path}?{query}" if query else path
        if code is None:
            reason = actor.authorize(verb, resource, sub, ns, name, group) if actor.authorize else actor.reason
            if reason is None:
                code = 403
            elif sub in STREAMING:
                code = 101
            else:
                code = 201 if verb == "create" else 200
        if level is None:
            level = policy
        lat = 700 + int(self.rng.random() ** 3 * 45_000)
        pool = self._uuids
        aid = pool.pop() if pool else self.uid()
        frag = actor_fragment(actor)
        ev = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": level, "auditID": aid,
              "stage": "ResponseComplete", "requestURI": uri, "verb": verb, "user": frag[0]}
        if impersonate is not None:
            ev["impersonatedUser"] = impersonate
        ev["sourceIPs"] = frag[1]
        ev["userAgent"] = actor.ua
        if ref is not None:
            ev["objectRef"] = ref
        why = actor.reason if reason is None else reason
        if code < 300:
            ev["responseStatus"] = self._ok.get(code) or {"metadata": {}, "code": code}
            if level != "Metadata":
                if req is not None:
                    ev["requestObject"] = req
                if resp is not None and level == "RequestResponse":
                    ev["responseObject"] = resp
        elif code == 403:
            msg = message or forbidden_message(actor.username, verb, resource, sub, group, ns, name, uri,
                                              actor.deny_suffix)
            ev["responseStatus"] = self._status(msg, "Forbidden", 403, resource, group, name)
            why = None
        else:
            reason_text = {404: "NotFound", 409: "Conflict", 422: "Invalid"}.get(code, "InternalError")
            kind = f"{resource}.{group}" if group else resource
            msg = message or f'{kind} "{name}" not found'
            ev["responseStatus"] = self._status(msg, reason_text, code, resource, group, name)
        if annotations:
            ann = dict(sorted({"authorization.k8s.io/decision": "forbid" if why is None else "allow",
                               "authorization.k8s.io/reason": why or "", **annotations}.items()))
        else:
            ann = self._forbid if why is None else self.allow(why)
        minutes = self._minutes
        m, r = divmod(t, MINUTE)
        p = minutes.get(m) or self._prefix(m)
        ev["requestReceivedTimestamp"] = f"{p}{r // US:02d}.{r % US:06d}Z"
        if duration and code < 300:
            ev["stage"] = "ResponseStarted"
            ev["stageTimestamp"] = self.ts(t + lat)
            ev["annotations"] = ann
            self.put(t + lat, orjson.dumps(ev))
            ev["stage"] = "ResponseComplete"
            end = t + duration
        else:
            end = t + lat
        m2, r = divmod(end, MINUTE)
        if m2 != m:
            p = minutes.get(m2) or self._prefix(m2)
        ev["stageTimestamp"] = f"{p}{r // US:02d}.{r % US:06d}Z"
        ev["annotations"] = ann
        self.put(end, orjson.dumps(ev))
        return aid

    def _shape(self, key: tuple) -> tuple:
        """URI path, objectRef and policy level of a request, cached: most requests repeat."""
        verb, resource, ns, name, sub, group, version = key
        if len(self._shapes) > 100_000:
            self._shapes.clear()
        if not resource:
            shape = ("/", None, "Metadata")
        else:
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
            shape = (api_path(resource, ns, name, sub, group, version), orjson.Fragment(orjson.dumps(ref)),
                     policy_level(verb, resource, sub, group, ns, name))
        self._shapes[key] = shape
        return shape

    def _prefix(self, minute: int) -> str:
        """'YYYY-MM-DDTHH:MM:' of a minute since the epoch, cached."""
        if len(self._minutes) > 20_000:
            self._minutes.clear()
        d, r = divmod(minute, 1440)
        day = self._days.get(d)
        if day is None:
            day = self._days[d] = datetime.fromtimestamp(d * 86400, timezone.utc).strftime("%Y-%m-%d")
        p = self._minutes[minute] = f"{day}T{r // 60:02d}:{r % 60:02d}:"
        return p

    def unauthenticated(self, t: int, ips: list, ua: str, verb: str, resource: str = "",
                        ns: str = "", name: str = "", group: str = "", version: str = "v1",
                        query: str = "", uri: str | None = None) -> str:
        """A request whose bearer token failed authentication (HTTP 401).

        The API server writes these from its failed-authentication filter: one
        ResponseStarted event, an empty user, no authorization annotations.
        """
        key = (verb, resource, ns, name, "", group, version)
        path, ref, level = self._shapes.get(key) or self._shape(key)
        if uri is None:
            uri = f"{path}?{query}" if query else path
        aid = self.uid()
        ev = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": level, "auditID": aid,
              "stage": "ResponseStarted", "requestURI": uri, "verb": verb, "user": {},
              "sourceIPs": ips, "userAgent": ua}
        if ref is not None:
            ev["objectRef"] = ref
        ev["responseStatus"] = {"metadata": {}, "message": "Authentication failed, attempted: bearer", "code": 401}
        end = t + 300 + int(self.rng.random() * 2000)
        ev["requestReceivedTimestamp"] = self.ts(t)
        ev["stageTimestamp"] = self.ts(end)
        self.put(end, orjson.dumps(ev))
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


def split_template(obj: dict, *holes: str) -> list[str]:
    """Serialize `obj` once and split it at the string placeholders `holes` (in order)."""
    text = orjson.dumps(obj).decode()
    parts = []
    for h in holes:
        before, text = text.split(f'"{h}"', 1)
        parts.append(before)
    return parts + [text]


class Template:
    """A request that recurs with only its ID, times, query string and bodies changing (lease
    renewals, watches): the event is serialized once and then filled in by string joins,
    several times cheaper than building and serializing it each time."""

    __slots__ = ("em", "path", "parts", "bodies")

    def __init__(self, em: Emitter, actor: Actor, verb: str, resource: str, ns: str = "", name: str = "",
                 group: str = "", version: str = "v1", reason: str | None = None, bodies: bool = False,
                 sub: str = "", path: str = ""):
        key = (verb, resource, ns, name, sub, group, version)
        shape_path, ref, level = em._shapes.get(key) or em._shape(key)
        path = path or shape_path
        user, ips = actor_fragment(actor)
        ev = {"kind": "Event", "apiVersion": "audit.k8s.io/v1", "level": level, "auditID": "@id@", "stage": "@stage@",
              "requestURI": "@uri@", "verb": verb, "user": user, "sourceIPs": ips, "userAgent": actor.ua,
              "objectRef": ref, "responseStatus": em._ok[200]}
        holes = ["@id@", "@stage@", "@uri@"]
        if bodies:
            ev["requestObject"], ev["responseObject"] = "@req@", "@resp@"
            holes += ["@req@", "@resp@"]
        ev["requestReceivedTimestamp"], ev["stageTimestamp"] = "@received@", "@staged@"
        ev["annotations"] = em.allow(actor.reason if reason is None else reason)
        self.em, self.path, self.bodies = em, path, bodies
        self.parts = split_template(ev, *holes, "@received@", "@staged@")

    def emit(self, t: int, query: str = "", req: str = "", resp: str = "", duration: int = 0,
             received: str = "") -> str:
        """Write the request received at `t` (µs, or `received` already formatted); `req` and
        `resp` are serialized JSON bodies."""
        em = self.em
        uri = f"{self.path}?{query}" if query else self.path
        if '"' in uri or "\\" in uri:
            raise ValueError(f"URI needs JSON escaping: {uri!r}")
        aid = em.uid()
        lat = 700 + int(em.rng.random() ** 3 * 45_000)
        p = self.parts
        received = received or em.ts(t)
        middle = [f'"{uri}"', p[3], req, p[4], resp, p[5]] if self.bodies else [f'"{uri}"', p[3]]
        if duration:
            line = "".join([p[0], f'"{aid}"', p[1], '"ResponseStarted"', p[2], *middle,
                            f'"{received}"', p[-2], f'"{em.ts(t + lat)}"', p[-1]])
            em.put(t + lat, line.encode())
            end = t + duration
        else:
            end = t + lat
        line = "".join([p[0], f'"{aid}"', p[1], '"ResponseComplete"', p[2], *middle,
                        f'"{received}"', p[-2], f'"{em.ts(end)}"', p[-1]])
        em.put(end, line.encode())
        return aid


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
