"""What an exec, attach or API-server proxy request runs, decoded from its request URI.

``kubectl exec`` sends argv as repeated ``command=`` query parameters (``+`` for a space,
percent escapes for the rest); the kubelet API reached through ``nodes/{name}/proxy/...`` runs
``/run/{namespace}/{pod}/{container}?cmd=...`` and ``/exec/...`` without any ``pods/exec`` record.
``command_facts`` decodes both the way kube-apiserver and the kubelet do, normalises the command
line against shell tricks (quotes, ``${IFS}``, backslash and hex escapes, globs, path games),
and names its **intents**: each a declared pattern (``INTENTS``) with why it indicates compromise.

The URI is attacker-controlled: the query, the command and every match are bounded, every pattern's
gaps are bounded (so matching is linear in the input), and whatever does not decode is counted in
``exec_decode_issues``, never raised. Pure: strings in, a dict of ``COLUMNS`` out.
"""
from __future__ import annotations

import ipaddress
import posixpath
import re
from bisect import bisect_left
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import pyarrow as pa

from features.derived import DerivedColumn, bounded, joined

MAX_QUERY_CHARS = 65_536   # the part of a query string decoded; kube-apiserver accepts request lines up to 1 MiB
MAX_COMMAND_CHARS = 4_096  # the argv kept in the column
MAX_MATCH_CHARS = 16_384   # the normalised command intents are matched on; longer is itself an intent (oversized)
MAX_GLOB_TOKENS = 32
MAX_ADDRESS_CANDIDATES = 256

COLUMNS: tuple[DerivedColumn, ...] = (
    DerivedColumn("exec_command", pa.string(),
                  "requestURI command= (exec/attach, nodes/proxy exec/attach) or cmd= (nodes/proxy run), decoded as the server does",
                  "the command line that ran, joined with spaces and bounded: what the analyst reads first"),
    DerivedColumn("exec_intents", pa.string(), "exec_command, normalised",
                  "the INTENTS the command matched (family:variant, comma-joined): reverse shells, credential reads, the "
                  "metadata endpoint, download-and-run, decoded execution, archive copies, installs, history clearing"),
    DerivedColumn("exec_decode_issues", pa.string(), "requestURI query",
                  "what did not decode as sent (DECODE_ISSUES): pairs the server skips, bytes that are not UTF-8, cuts"),
    DerivedColumn("proxy_resource", pa.string(), "requestURI path .../{nodes|pods|services}/{name}/proxy/...",
                  "which API-server proxy carried the request: nodes/proxy reaches the kubelet API of a whole node"),
    DerivedColumn("proxy_target", pa.string(), "requestURI path",
                  "the node, or namespace/name of the pod or service, the proxy reached (scheme and port stripped)"),
    DerivedColumn("proxy_endpoint", pa.string(), "requestURI path after /proxy",
                  "the kubelet endpoint (KUBELET_ENDPOINTS) for nodes/proxy, else the first path segment, bounded"),
    DerivedColumn("proxy_class", pa.string(), "proxy_resource, proxy_endpoint",
                  "execution (run/exec/attach/portForward/cri), read (pods, logs, configz, debug, checkpoint), metrics "
                  "(Prometheus scraping: benign), application (a pod's or service's own HTTP), other (a path the kubelet does not serve)"),
    DerivedColumn("proxy_pod", pa.string(), "requestURI path of a kubelet run/exec/attach/portForward/containerLogs/checkpoint call",
                  "namespace/pod the kubelet call acts on: the pod that nodes/proxy reached without a pods/exec record"),
)
COLUMN_NAMES = tuple(c.name for c in COLUMNS)
EMPTY: dict = dict.fromkeys(COLUMN_NAMES)

DECODE_ISSUES: dict[str, str] = {
    "invalid_escape": "a query pair with a % not followed by two hex digits: Go's query parser skips the pair, so it never ran",
    "semicolon_pair": "a query pair holding a raw ';': Go's query parser skips it (since Go 1.17), so it never ran",
    "invalid_utf8": "a decoded value that is not UTF-8: kept with U+FFFD in place of the bad bytes",
    "query_truncated": f"the query was longer than {MAX_QUERY_CHARS:,} characters: only its start was decoded",
    "command_truncated": f"the command was longer than {MAX_COMMAND_CHARS:,} characters: the column holds its start",
    "path_unclean": "the proxied path holds . or .. segments or an invalid escape: classified after cleaning",
}

# --------------------------------------------------------------------------- kubelet endpoints
# The kubelet server's routes (kubernetes pkg/kubelet/server/server.go), by what reaching them through
# nodes/proxy lets a caller do. Matched case-insensitively on the first segment of the cleaned path.
KUBELET_ENDPOINTS: dict[str, tuple[str, str]] = {
    "run": ("execution", "POST /run/{ns}/{pod}/{container}?cmd=: runs a command in any pod on the node and returns its output"),
    "exec": ("execution", "/exec/{ns}/{pod}/{container}?command=: an exec stream into any pod on the node"),
    "attach": ("execution", "/attach/...: attaches to a container's main process"),
    "portforward": ("execution", "/portForward/{ns}/{pod}: a tunnel into any pod on the node"),
    "cri": ("execution", "/cri/...: the container runtime's streaming endpoint the kubelet hands exec/attach to"),
    "pods": ("read", "/pods: every pod spec on the node, with env values and volume sources"),
    "runningpods": ("read", "/runningpods/: the pods the runtime runs"),
    "configz": ("read", "/configz: the kubelet's configuration"),
    "logs": ("read", "/logs/: the node's own log files (/var/log)"),
    "containerlogs": ("read", "/containerLogs/{ns}/{pod}/{container}: any container's logs"),
    "debug": ("read", "/debug/pprof, /debug/flags/v: profiles of the kubelet's memory, and changing its verbosity"),
    "checkpoint": ("read", "/checkpoint/{ns}/{pod}/{container}: dumps a container's memory (its secrets) to the node's disk"),
    "flagz": ("read", "/flagz: the kubelet's flags"),
    "statusz": ("read", "/statusz: the kubelet's status page"),
    "spec": ("read", "/spec/: the machine's hardware description (older kubelets)"),
    "metrics": ("metrics", "/metrics, /metrics/cadvisor, /metrics/resource, /metrics/probes: what Prometheus scrapes"),
    "stats": ("metrics", "/stats/: resource usage summaries (metrics-server)"),
    "healthz": ("metrics", "/healthz: the kubelet's health"),
}
# Endpoints whose path names the pod acted on: /{endpoint}/{namespace}/{pod}/...
_POD_ENDPOINTS = frozenset({"run", "exec", "attach", "portforward", "containerlogs", "checkpoint"})
_APPLICATION_METRICS = frozenset({"metrics", "healthz", "livez", "readyz"})

# --------------------------------------------------------------------------- intents


@dataclass(frozen=True)
class Near:
    """``first`` followed within ``gap`` characters by ``second`` (each a short regex), with none of ``barrier``'s
    characters between them. Matched on the two anchors' positions (``_near``), so a long gap costs no backtracking."""

    first: str
    second: str
    gap: int
    barrier: str = ""


@dataclass(frozen=True)
class Intent:
    name: str  # family:variant; rules and flags read the family prefix
    why: str
    # Any of these matching the normalised command (case-insensitive) names the intent; () when computed in code.
    # Regexes repeat only within small bounds ({m,n}, n <= 64): longer reaches are Near pairs.
    patterns: tuple[str | Near, ...] = ()

    @property
    def family(self) -> str:
        return self.name.split(":", 1)[0]

    def regexes(self) -> list[str]:
        return [r for p in self.patterns for r in ((p,) if isinstance(p, str) else (p.first, p.second))]


_SH = r"(?:/[\w./-]{0,40}/)?(?:ba|z|k|da|a)?sh\b"
_INTERPRETER = r"(?:" + _SH + r"|(?:/[\w./-]{0,40}/)?(?:python[\d.]{0,4}|perl|ruby|php|node|lua)\b)"
_RELAY = r"\b(?:nc|ncat|netcat|socat|telnet|openssl)\b"
_BASE64_DECODE = r"\b(?:base64\s(?:-\w{0,3}d\w{0,3}|--decode)|xxd\s-r\w{0,2}|openssl\s(?:enc\s)?-?(?:base64\s-d|d\w{0,3}\s-base64))\b"
_TO_INTERPRETER = r"\|\s?(?:sudo\s)?" + _INTERPRETER
_FETCH = r"\b(?:curl|wget|fetch)\b"

INTENTS: tuple[Intent, ...] = (
    # --- reverse shells: the container's shell wired to an attacker's listener
    Intent("reverse_shell:dev_tcp", "bash's /dev/tcp and /dev/udp open a network socket from a redirection: the classic one-line reverse shell",
           (r"/dev/(?:tcp|udp)/",)),
    Intent("reverse_shell:fifo_relay", "a named pipe looped through nc/ncat/socat/telnet/openssl gives a shell to whoever listens",
           (Near(r"\bmk(?:fifo|nod)\b", _RELAY, 300),)),
    Intent("reverse_shell:netcat_exec", "netcat's -e/-c/--exec hands a program's stdin and stdout to a network peer",
           (Near(r"\b(?:nc|ncat|netcat)\b", r"\s(?:-[a-z]{0,6}[ec]\b|--(?:sh-|lua-)?exec\b)", 200),)),
    Intent("reverse_shell:socat", "socat joining a program and a TCP or TLS socket is a full interactive shell over the network",
           (Near(r"\bsocat\b", r"\b(?:exec|system|tcp[46]?(?:-connect|-listen)?|openssl(?:-connect)?):", 300),)),
    Intent("reverse_shell:interactive_redirect", "an interactive shell (-i) with its streams redirected (>&, <&) is a shell handed to a socket or pipe",
           (Near(r"\b(?:ba|z|k|da|a)?sh\s(?:-\w{1,4}\s){0,3}-\w{0,3}i\w{0,3}\b", r"[<>]&|&>", 200),)),
    Intent("reverse_shell:script_socket",
           "an interpreter one-liner that connects a socket or spawns a pty: reverse shells without a shell binary",
           (Near(r"\b(?:python[\d.]{0,4}|perl|ruby|php|node|lua)\b",
                 r"\bconnect\s?\(|\bfsockopen\b|\btcpsocket\b|\bio::socket::inet\b|\bnet\.connect\b|\bnew\snet\.socket\b|\bpty\.spawn\b", 400),)),
    Intent("reverse_shell:awk_inet", "gawk's /inet/tcp special files: a reverse shell in awk", (r"/inet[46]?/(?:tcp|udp)/",)),
    Intent("reverse_shell:telnet_pipe", "telnet piped into a shell: a reverse shell without netcat", (Near(r"\btelnet\b", r"\|\s?" + _SH, 200),)),
    # --- credential reads: what a stolen pod's identity is made of
    Intent("credential_read:proc_environ",
           "a process's environment holds the secrets injected as env vars (and /proc/1/environ the container's main process's)",
           (r"/proc/(?:\d{1,10}|self|thread-self|\*|\[[\d*?-]{1,10}\]|\$\$|\$\w{1,20})(?:/task/[$*\w]{1,12})?/environ\b",)),
    Intent("credential_read:service_account_token", "the mounted service-account token: whoever reads it acts as the pod's identity",
           (r"/(?:var/)?run/secrets/kubernetes\.io/serviceaccount\b",)),
    Intent("credential_read:irsa_token", "the IRSA web-identity token: exchanged with STS for the pod's IAM role credentials",
           (r"/(?:var/)?run/secrets/eks\.amazonaws\.com/serviceaccount\b",)),
    Intent("credential_read:pod_identity_token",
           "the EKS Pod Identity token (eks-pod-identity-token): presented to the Pod Identity agent for the pod's IAM role",
           (r"/(?:var/)?run/secrets/pods\.eks\.amazonaws\.com/serviceaccount\b",)),
    Intent("credential_read:mounted_secret",
           "/run/secrets holds mounted secrets (Docker and Kubernetes conventions); reading the directory is reading them all",
           (r"/run/secrets(?:/(?!kubernetes\.io/serviceaccount|eks\.amazonaws\.com/serviceaccount|pods\.eks\.amazonaws\.com/serviceaccount)"
            r"|(?=[\s;&|)`]|$))",)),
    Intent("credential_read:kubelet_pod_volumes", "on a node, every pod's projected token and secret volumes live under /var/lib/kubelet/pods",
           (r"/var/lib/kubelet/pods\b",)),
    Intent("credential_read:kubeconfig", "a kubeconfig holds cluster credentials (client certificates, tokens, exec plugins)",
           (r"\.kube/config\b|\bkubeconfig\b",)),
    Intent("credential_read:kubernetes_config", "a node's /etc/kubernetes and the kubelet's kubeconfig and pki are the node's own credentials",
           (r"/etc/kubernetes(?:/|(?=[\s;&|)`]|$))|/var/lib/kubelet/(?:kubeconfig|pki)\b",)),
    Intent("credential_read:private_key", "private keys (SSH, TLS) and .ssh directories: credentials that outlive the pod",
           (r"\bid_(?:rsa|dsa|ecdsa|ed25519)\b|[*?\w-]\.(?:pem|key)\b|\bprivate[_-]?key\b|/\.ssh/",)),
    Intent("credential_read:aws_credentials",
           "AWS credential files, keys in the environment, and the variables that point the SDK at the pod's credentials",
           (r"\.aws/credentials\b|\baws_(?:secret_access_key|session_token)\b|\baws_container_(?:credentials_(?:full|relative)_uri|"
            r"authorization_token(?:_file)?)\b|\baws_web_identity_token_file\b|\baws\sconfigure\s(?:get|list|export-credentials)\b",)),
    Intent("credential_read:shadow", "password hashes and sudo rules of the image", (r"/etc/(?:g?shadow|sudoers)\b",)),
    Intent("credential_read:registry_auth", "container registry credentials", (r"\.docker/config\.json\b|/\.dockercfg\b",)),
    Intent("credential_read:env_dump",
           "dumping the environment prints every secret injected as an env var (weak alone: engineers do it to debug)",
           (r"(?:^|[;&|(`]\s?|\b(?:ba|z|k|da)?sh\s-c\s)(?:[\w./-]{0,30}/)?(?:env|printenv|export\s-p|declare\s-x|set)(?=\s?$|\s?[;&|>)`])",
            r"\bprintenv\s[\w-]{0,40}(?:secret|token|passw|key|aws_)")),
    # --- the instance metadata and credential endpoints (computed by _endpoint_intents) and IMDS's own paths
    Intent("metadata_endpoint:imds",
           "169.254.169.254 / fd00:ec2::254 in any notation (decimal, hex, octal, mixed, IPv4-mapped): the node's IAM role credentials"),
    Intent("metadata_endpoint:pod_identity_agent", "169.254.170.23 / fd00:ec2::23: the EKS Pod Identity agent hands out pod IAM credentials"),
    Intent("metadata_endpoint:ecs_credentials", "169.254.170.2: the container credentials endpoint (ECS, and EKS Fargate)"),
    Intent("metadata_endpoint:imds_path", "IMDS's own paths reached through any host name: role credentials, the v2 session token, user data",
           (r"/latest/(?:meta-data|api/token|user-data|dynamic)\b",)),
    Intent("metadata_endpoint:imds_hostname", "instance-data(.ec2.internal) resolves to the metadata endpoint", (r"\binstance-data\b",)),
    # --- download and run
    Intent("download_exec:pipe_to_interpreter", "fetching a script and piping it into a shell or interpreter runs whatever the server sends",
           (Near(_FETCH, _TO_INTERPRETER, 500, barrier=";&"),)),
    Intent("download_exec:subshell", "$(curl ...), <(curl ...) and backticks run downloaded text as commands",
           (r"(?:\$\(|<\(|`)\s?(?:[\w./-]{0,30}/)?(?:curl|wget)\b",)),
    Intent("download_exec:fetch_then_run", "a download made executable (chmod +x) or run from /tmp: dropping a tool or an implant",
           (Near(r"\b(?:curl|wget)\b", r"\bchmod\s(?:[ugoa]{0,3}\+[rwst]{0,3}x|[0-7]?[0-7]{2}[1357])\b|[;&]\s?\./|"
                 r"\b(?:ba|z|k|da)?sh\s/(?:tmp|dev/shm|var/tmp)/|\b(?:python[\d.]{0,4}|perl)\s/(?:tmp|dev/shm|var/tmp)/", 500),)),
    # --- decoded execution
    Intent("encoded_exec:decode_to_interpreter", "decoding base64 or hex into a shell hides the real command from anyone reading the audit log",
           (Near(_BASE64_DECODE, _TO_INTERPRETER, 300),)),
    Intent("encoded_exec:decode_subshell", "a command built from decoded text at run time ($(... | base64 -d))",
           (Near(r"\$\(|`|<\(", r"\b(?:base64\s(?:-\w{0,3}d|--decode)|xxd\s-r)", 300),)),
    Intent("encoded_exec:interpreter_decode", "an interpreter evaluating decoded text: the same trick in Python, PHP, Ruby, Node",
           (Near(r"\b(?:exec|eval|system|os\.system)\s?\(", r"\b(?:b64decode|base64_decode|decode64|atob|buffer\.from|frombase64string)\b", 200),)),
    # --- archive copies: kubectl cp runs tar in the container (computed by _tar_intents)
    Intent("archive_copy:from_pod", "tar creating an archive on stdout (tar cf -): kubectl cp copying files out of the pod"),
    Intent("archive_copy:into_pod", "tar extracting from stdin (tar xf -): kubectl cp copying files into the pod"),
    # --- tooling and clean-up
    Intent("package_install:os_package", "installing packages into a running container: tooling an attacker needs and the image did not ship",
           (r"\b(?:apt(?:-get)?\s(?:-[\w-]{1,16}\s){0,3}install|apk\s(?:-[\w-]{1,16}\s){0,3}add|(?:yum|dnf|microdnf|tdnf)\s"
            r"(?:-[\w-]{1,16}\s){0,3}install|zypper\s(?:-[\w-]{1,16}\s){0,3}(?:in|install))\b",)),
    Intent("package_install:language_package", "installing language packages into a running container",
           (r"\b(?:pip[\d.]{0,4}|npm|gem|cpanm?)\s(?:-[\w-]{1,16}\s){0,3}(?:install|i)\b",)),
    Intent("history_clear:shell_history", "clearing or disabling shell history hides what was typed",
           (r"\bhistory\s-c\b|\bunset\s(?:-v\s)?histfile\b|\bhistfile=/dev/null\b|\bhistsize=0\b|\bset\s\+o\shistory\b|"
            r">\s?[\w~/.-]{0,60}\.(?:bash_|zsh_)history\b",
            Near(r"\b(?:rm|shred|truncate)\b", r"\.(?:bash_|zsh_|sh_)?history\b", 80))),
    Intent("history_clear:system_logs", "deleting or truncating log files erases the node's or container's record",
           (r">\s?/var/log/\S", Near(r"\b(?:rm|shred|truncate)\b", r"/var/log\b", 80), Near(r"\bjournalctl\b", r"--vacuum", 60))),
    # --- obfuscation (computed by normalise: the tricks themselves)
    Intent("obfuscation:shell_tricks", "${IFS}, hex or octal escapes, backslashes or empty quotes inside words: written to slip past pattern matching"),
    Intent("obfuscation:oversized_command",
           f"a command longer than {MAX_MATCH_CHARS:,} characters: padding to push a payload past what decoders read"),
)
INTENT_BY_NAME = {i.name: i for i in INTENTS}


def _compiled(pattern: str | Near):
    if isinstance(pattern, str):
        return re.compile(pattern, re.I)
    return (re.compile(pattern.first, re.I), re.compile(pattern.second, re.I), pattern.gap, pattern.barrier)


_MATCHERS = tuple((i.name, tuple(_compiled(p) for p in i.patterns)) for i in INTENTS if i.patterns)


def _near(text: str, first: re.Pattern, second: re.Pattern, gap: int, barrier: str) -> bool:
    """Whether some match of ``first`` ends at most ``gap`` characters before a match of ``second`` starts, with no
    ``barrier`` character between (a Near): one pass over each anchor's matches and a bisect per first."""
    seconds = [m.start() for m in second.finditer(text)]
    if not seconds:
        return False
    barriers = [i for i, char in enumerate(text) if char in barrier] if barrier else []
    for match in first.finditer(text):
        end = match.end()
        index = bisect_left(seconds, end)
        if index < len(seconds) and seconds[index] - end <= gap and \
                (not barriers or bisect_left(barriers, end) == bisect_left(barriers, seconds[index])):
            return True
    return False


# Concrete sensitive paths a shell glob in the command may expand to (cat /v?r/run/s*/k*/serviceaccount/t*).
GLOB_TARGETS: dict[str, str] = {
    "/proc/1/environ": "credential_read:proc_environ",
    "/proc/self/environ": "credential_read:proc_environ",
    "/var/run/secrets/kubernetes.io/serviceaccount": "credential_read:service_account_token",
    "/var/run/secrets/kubernetes.io/serviceaccount/token": "credential_read:service_account_token",
    "/run/secrets/kubernetes.io/serviceaccount/token": "credential_read:service_account_token",
    "/var/run/secrets/eks.amazonaws.com/serviceaccount/token": "credential_read:irsa_token",
    "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token": "credential_read:pod_identity_token",
    "/root/.kube/config": "credential_read:kubeconfig",
    "/etc/kubernetes/admin.conf": "credential_read:kubernetes_config",
    "/etc/kubernetes/kubelet.conf": "credential_read:kubernetes_config",
    "/var/lib/kubelet/kubeconfig": "credential_read:kubernetes_config",
    "/root/.aws/credentials": "credential_read:aws_credentials",
    "/root/.ssh/id_rsa": "credential_read:private_key",
    "/etc/shadow": "credential_read:shadow",
    "/dev/tcp": "reverse_shell:dev_tcp",
}

# Addresses of the credential endpoints, as integers (IPv4) and IPv6 objects.
_V4_ENDPOINTS = {
    int(ipaddress.IPv4Address("169.254.169.254")): "metadata_endpoint:imds",
    int(ipaddress.IPv4Address("169.254.170.23")): "metadata_endpoint:pod_identity_agent",
    int(ipaddress.IPv4Address("169.254.170.2")): "metadata_endpoint:ecs_credentials",
}
_V6_ENDPOINTS = {
    ipaddress.IPv6Address("fd00:ec2::254"): "metadata_endpoint:imds",
    ipaddress.IPv6Address("fd00:ec2::23"): "metadata_endpoint:pod_identity_agent",
}
# inet_aton notations: 1 to 4 parts, each decimal, 0x-hex or 0-octal (what curl, wget and libc accept).
_V4_CANDIDATE = re.compile(r"(?<![\w.])((?:0x[0-9a-f]{1,8}|\d{1,12})(?:\.(?:0x[0-9a-f]{1,8}|\d{1,12})){0,3})(?![\w])", re.I)
_V6_CANDIDATE = re.compile(r"(?<![\w:])([0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?::\d{1,3}(?:\.\d{1,3}){3})?)(?:%[\w-]{1,16})?(?![\w:])", re.I)

# --------------------------------------------------------------------------- query decoding
_INVALID_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _unescape(value: str, issues: set[str]) -> str | None:
    """Go's QueryUnescape: '+' is a space, %XX a byte; None (the pair is skipped) for a bad escape."""
    if "%" not in value:
        return value.replace("+", " ")
    if _INVALID_ESCAPE.search(value):
        return None
    raw = unquote_to_bytes(value.replace("+", " "))
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        issues.add("invalid_utf8")
        return raw.decode("utf-8", errors="replace")


def parse_query(query: str, issues: set[str]) -> dict[str, list[str]]:
    """The query's parameters as Go's ``url.ParseQuery`` gives them to the server: pairs split on '&',
    a pair with a raw ';' or a bad escape skipped (it never reaches the handler), repeated keys kept in order.
    What was skipped or cut is added to ``issues``."""
    if len(query) > MAX_QUERY_CHARS:
        query = query[:MAX_QUERY_CHARS]
        issues.add("query_truncated")
    params: dict[str, list[str]] = {}
    for pair in query.split("&"):
        if not pair:
            continue
        if ";" in pair:
            issues.add("semicolon_pair")
            continue
        key, _, value = pair.partition("=")
        key, value = _unescape(key, issues), _unescape(value, issues)
        if key is None or value is None:
            issues.add("invalid_escape")
            continue
        params.setdefault(key, []).append(value)
    return params


# --------------------------------------------------------------------------- normalisation
_ESCAPE = re.compile(r"\\(?:x([0-9a-fA-F]{1,2})|u([0-9a-fA-F]{4})|([0-7]{1,3})|(.))", re.S)
_IFS = re.compile(r"\$\{IFS[^}]{0,16}\}|\$IFS(?!\w)")
_EMPTY_EXPANSIONS = re.compile(r"\$[@*]|\$\{[@*]\}|\$\(\s{0,4}\)|``")
_TRICKS = re.compile(r"\$\{?IFS|\\(?:x[0-9a-fA-F]|[0-7]{2})|\w\\\w|\w'[^'\s]{0,8}'\w|\w\"[^\"\s]{0,8}\"\w|\$[@*]\w|\w\$\{?[@*]")
_SEPARATOR_NEWLINE = re.compile(r"[\r\n]+")
_SPACES = re.compile(r"\s+")
_DOT_SEGMENT = re.compile(r"/\.(?=/)")
_SLASHES = re.compile(r"(?<!:)/{2,}")  # not the // of a URL


def _escape(match: re.Match) -> str:
    hex_, uni, octal, other = match.groups()
    if hex_ or uni:
        return chr(int(hex_ or uni, 16))
    if octal:
        return chr(int(octal, 8))
    return " " if other in "ntr\n" else other


def normalise(command: str) -> tuple[str, set[str]]:
    """The command line as a shell would see its words: escapes decoded, ${IFS} as a space, quotes and
    empty expansions removed, newlines as ';', whitespace collapsed, '//' and '/./' and '..' resolved.
    Case is kept (tar -C is not tar -c); intent patterns match case-insensitively. Returns the text
    (at most MAX_MATCH_CHARS) and the obfuscation intents the tricks themselves amount to."""
    found: set[str] = set()
    if len(command) > MAX_MATCH_CHARS:
        command = command[:MAX_MATCH_CHARS]
        found.add("obfuscation:oversized_command")
    if _TRICKS.search(command):
        found.add("obfuscation:shell_tricks")
    text = _IFS.sub(" ", command)
    text = _EMPTY_EXPANSIONS.sub("", text)
    text = re.sub(r"\$(?=['\"])", "", text)  # $'...' ANSI-C quoting: the escapes inside are decoded below
    text = _ESCAPE.sub(_escape, text)
    text = text.replace("'", "").replace('"', "")
    text = _SEPARATOR_NEWLINE.sub(" ; ", text)
    text = _SPACES.sub(" ", text).strip()
    text = _SLASHES.sub("/", _DOT_SEGMENT.sub("", text))
    if "/.." in text:
        text = " ".join(_clean_path(token) if "/.." in token else token for token in text.split(" "))
    return text, found


def _clean_path(token: str) -> str:
    start = token.find("/")
    return token[:start] + posixpath.normpath(token[start:]) if start >= 0 else token


# --------------------------------------------------------------------------- intents computed in code


def _v4_value(candidate: str) -> int | None:
    """The address inet_aton gives a dotted/decimal/hex/octal candidate, or None."""
    parts = []
    for part in candidate.split("."):
        lower = part.lower()
        try:
            if lower.startswith("0x"):
                parts.append(int(lower[2:], 16))
            elif len(part) > 1 and part.startswith("0"):
                parts.append(int(part, 8))
            else:
                parts.append(int(part, 10))
        except ValueError:
            return None
    last_bits = 32 - 8 * (len(parts) - 1)
    if any(p > 255 for p in parts[:-1]) or parts[-1] >= 1 << last_bits:
        return None
    value = 0
    for p in parts[:-1]:
        value = value << 8 | p
    return value << last_bits | parts[-1]


def _endpoint_intents(text: str) -> set[str]:
    found = set()
    for count, match in enumerate(_V4_CANDIDATE.finditer(text)):
        if count >= MAX_ADDRESS_CANDIDATES:
            break
        name = _V4_ENDPOINTS.get(_v4_value(match.group(1)))
        if name:
            found.add(name)
    if ":" in text:
        for count, match in enumerate(_V6_CANDIDATE.finditer(text)):
            if count >= MAX_ADDRESS_CANDIDATES:
                break
            try:
                address = ipaddress.IPv6Address(match.group(1))
            except ValueError:
                continue
            name = _V6_ENDPOINTS.get(address)
            if name is None and address.ipv4_mapped is not None:
                name = _V4_ENDPOINTS.get(int(address.ipv4_mapped))
            if name:
                found.add(name)
    return found


_TAR = re.compile(r"(?:^|[\s;&|(`/])tar\s((?:\S{1,64}\s?){1,8})", re.I)


def _tar_intents(text: str) -> set[str]:
    """kubectl cp runs ``tar cf - <path>`` (copy out) or ``tar xmf - -C <dir>`` (copy in) in the container."""
    found = set()
    for match in _TAR.finditer(text):
        tokens = match.group(1).split()
        create = extract = stdio = False
        for index, token in enumerate(tokens):
            if token in ("--create",):
                create = True
            elif token in ("--extract", "--get"):
                extract = True
            elif token.startswith("--file") and token.endswith("=-") or token in ("-f-", "--to-stdout", "-O"):
                stdio = True
            elif token == "-" and index > 0 and (tokens[index - 1] == "--file" or
                                                  (not tokens[index - 1].startswith("--") and tokens[index - 1].endswith("f"))):
                stdio = True
            letters = token[1:] if token.startswith("-") and not token.startswith("--") else (token if index == 0 else "")
            if letters.isalpha() and len(letters) <= 12:
                create = create or "c" in letters
                extract = extract or "x" in letters
        if stdio and create:
            found.add("archive_copy:from_pod")
        if stdio and extract:
            found.add("archive_copy:into_pod")
    return found


_GLOB_TOKEN = re.compile(r"[^\s;&|<>()`]{0,255}[*?\[][^\s;&|<>()`]{0,255}")


def _glob_regex(glob: str) -> re.Pattern | None:
    """A shell glob as a regex over one path: * and ? never cross '/', [...] is a class."""
    out, index = [], 0
    while index < len(glob):
        char = glob[index]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = glob.find("]", index + 2)
            if end < 0:
                out.append(re.escape(char))
            else:
                body = glob[index + 1:end].replace("\\", "\\\\")
                out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
                index = end
        else:
            out.append(re.escape(char))
        index += 1
    try:
        return re.compile("".join(out), re.I)
    except re.error:
        return None


def _glob_intents(text: str) -> set[str]:
    found: set[str] = set()
    if "*" not in text and "?" not in text and "[" not in text:
        return found
    for count, match in enumerate(_GLOB_TOKEN.finditer(text)):
        if count >= MAX_GLOB_TOKENS:
            break
        token = match.group(0)
        start = token.find("/")
        if start < 0 or sum(c not in "*?[]/" for c in token[start:]) < 3:
            continue  # a glob with no literal path to speak of (/*, */*) names nothing in particular
        pattern = _glob_regex(token[start:])
        if pattern is None:
            continue
        found.update(name for path, name in GLOB_TARGETS.items() if pattern.fullmatch(path))
    return found


def command_intents(command: str | None) -> list[str]:
    """The INTENTS a command line matches, sorted (normalised first; see ``normalise``)."""
    if not command:
        return []
    text, found = normalise(command)
    for name, patterns in _MATCHERS:
        if any(_near(text, *p) if isinstance(p, tuple) else p.search(text) for p in patterns):
            found.add(name)
    found |= _endpoint_intents(text) | _tar_intents(text) | _glob_intents(text)
    return sorted(found)


# --------------------------------------------------------------------------- request URIs
_EXEC_PATH = re.compile(r"^/api/v1/namespaces/[^/]{1,253}/pods/[^/]{1,253}/(?:exec|attach)/?$")
_PROXY_PATH = re.compile(
    r"^/api/v1/(?:proxy/)?(?:nodes/(?P<node>[^/]+)|namespaces/(?P<namespace>[^/]{1,253})/(?P<kind>pods|services)/"
    r"(?P<name>[^/]+))(?P<proxy>/proxy)?(?P<rest>/.*)?\Z",
    re.S,
)
_SCHEME_PORT = re.compile(r"^(?:https?:)?(?P<host>\[[^\]]{0,64}\]|[^:]{0,300})(?::[^:]{0,16})?$")


def _target(raw: str) -> str:
    """A proxy target without its scheme prefix and port (https:ip-10-0-1-5.ec2.internal:10250 -> ip-10-0-1-5.ec2.internal)."""
    match = _SCHEME_PORT.match(raw)
    return match.group("host") if match and match.group("host") else raw


def _argv(params: dict[str, list[str]], request_object) -> list[str]:
    argv = params.get("command")
    if not argv and isinstance(request_object, dict) and isinstance(request_object.get("command"), list):
        argv = [a for a in request_object["command"] if isinstance(a, str)]  # PodExecOptions, as some exporters log it
    return argv or []


def _with_command(row: dict, argv: list[str], issues: set[str]) -> None:
    command = " ".join(argv)
    if not command:
        return
    if len(command) > MAX_COMMAND_CHARS:
        issues.add("command_truncated")
    row["exec_command"] = bounded(command, MAX_COMMAND_CHARS)
    row["exec_intents"] = joined(command_intents(command))


def _split_uri(uri: str) -> tuple[str, str]:
    path, _, query = uri.partition("?")
    return path.split("#", 1)[0], query.split("#", 1)[0]


def command_facts(request_uri: str | None, request_object=None, subresource: str | None = None) -> dict:
    """The COLUMNS of one request: argv and intents of an exec/attach (pods/{name}/exec, or the kubelet's
    run/exec/attach reached through nodes/proxy), and what a nodes/pods/services proxy request reached.
    An exec/attach event without a request URI (some exporters drop it) takes argv from a PodExecOptions
    ``request_object``. Every column is None for any other request. Never raises on any string."""
    row = dict(EMPTY)
    issues: set[str] = set()
    if not isinstance(request_uri, str) or not request_uri:
        if subresource in ("exec", "attach"):
            _with_command(row, _argv({}, request_object), issues)
        return row
    if "/exec" not in request_uri and "/attach" not in request_uri and "/proxy" not in request_uri:
        return row
    path, query = _split_uri(request_uri)
    if _EXEC_PATH.match(path):
        _with_command(row, _argv(parse_query(query, issues), request_object), issues)
    else:
        _proxy_facts(path, query, row, issues)
    row["exec_decode_issues"] = joined(issues)
    return row


def _proxy_facts(path: str, query: str, row: dict, issues: set[str]) -> None:
    if _INVALID_ESCAPE.search(path):
        issues.add("path_unclean")
    path = unquote_to_bytes(path).decode("utf-8", errors="replace") if "%" in path else path
    match = _PROXY_PATH.match(path)
    if not match or not (match.group("proxy") or "/api/v1/proxy/" in path):
        return
    kind = "nodes" if match.group("node") else match.group("kind")
    row["proxy_resource"] = kind
    row["proxy_target"] = bounded(_target(match.group("node")) if kind == "nodes"
                                  else f"{match.group('namespace')}/{_target(match.group('name'))}", 256)
    rest = match.group("rest") or "/"
    cleaned = posixpath.normpath(rest) if rest != "/" else "/"
    if cleaned != rest.rstrip("/") and rest != "/":
        issues.add("path_unclean")
    segments = [s for s in cleaned.split("/") if s]
    first = segments[0].lower() if segments else ""
    if kind != "nodes":
        row["proxy_endpoint"] = bounded(first, 64) or None
        row["proxy_class"] = "metrics" if first in _APPLICATION_METRICS else "application"
        return
    endpoint = KUBELET_ENDPOINTS.get(first)
    row["proxy_endpoint"] = ("/".join(s.lower() for s in segments[:2]) if first == "metrics" and len(segments) > 1
                             else bounded(first, 64)) or None
    row["proxy_class"] = endpoint[0] if endpoint else "other"
    if first in _POD_ENDPOINTS and len(segments) >= 3:
        row["proxy_pod"] = bounded(f"{segments[1]}/{segments[2]}", 256)
    if first == "run":
        cmd = parse_query(query, issues).get("cmd")
        _with_command(row, cmd[0].split(" ") if cmd else [], issues)  # the kubelet splits cmd on single spaces
    elif first in ("exec", "attach"):
        _with_command(row, _argv(parse_query(query, issues), None), issues)


def command_columns(request_uris) -> dict[str, list]:
    """``command_facts`` over a column of request URIs (the table path: call it on the few rows whose
    subresource is exec, attach or proxy), as one list per COLUMNS name."""
    out: dict[str, list] = {name: [] for name in COLUMN_NAMES}
    for uri in request_uris:
        facts = command_facts(uri)
        for name in COLUMN_NAMES:
            out[name].append(facts[name])
    return out
