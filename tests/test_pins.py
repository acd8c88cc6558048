"""What the node scripts download is pinned: https only (redirects included), signing keys by
fingerprint, checked on the node before any package manager trusts them.

The scripts run as in tests/test_provision.py (bash, stub system commands, a fake node); the key
parser runs on the real public keys of Docker's and pkgs.k8s.io's repositories
(tests/fixtures/keys/), with gpg as the reference where it is installed; curl's own behaviour
with the flags the scripts pass is checked with the real curl against loopback servers.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import shutil
import ssl
import subprocess
import threading
from pathlib import Path

import pytest

from test_provision import (KEY_FINGERPRINTS, KEYS, PROVISION, SCENARIOS, contains, key_urls, prepare_scenario,
                            run_all, without_curl)

LIB = PROVISION / "lib.sh"


# --------------------------------------------------------------------------- armour helpers


def dearmour(text: str) -> bytes:
    body = text.split("\n\n", 1)[1].split("\n=", 1)[0].split("-----END", 1)[0]
    return base64.b64decode("".join(body.split()))


def crc24(data: bytes) -> int:
    crc = 0xB704CE
    for octet in data:
        crc ^= octet << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def armour(data: bytes) -> str:
    b64 = base64.b64encode(data).decode()
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    check = base64.b64encode(crc24(data).to_bytes(3, "big")).decode()
    return ("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n" + "\n".join(lines) + f"\n={check}\n"
            "-----END PGP PUBLIC KEY BLOCK-----\n")


def key_text(name: str) -> str:
    return (KEYS / name).read_text()


def tampered(text: str) -> str:
    """One base64 character of the key material changed (the first line after the blank one)."""
    head, body = text.split("\n\n", 1)
    first = body[:20]
    swapped = first[:10] + ("A" if first[10] != "A" else "B") + first[11:]
    return head + "\n\n" + swapped + body[20:]


def lib(tmp_path: Path, script: str, *args: str):
    return subprocess.run(["bash", "-c", f'. "{LIB}"; {script}', "lib", *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path), "LC_ALL": "C"}, timeout=60)


def fingerprints(tmp_path: Path, text: str):
    path = tmp_path / "key.asc"
    path.write_bytes(text.encode())
    result = lib(tmp_path, 'pgp_fingerprints "$1"', str(path))
    return result.returncode, result.stdout.split(), result.stderr


def gpg_fingerprints(tmp_path: Path, text: str):
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700, exist_ok=True)
    path = tmp_path / "gpg-key.asc"
    path.write_text(text)
    out = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--show-keys", "--with-colons", str(path)],
                         capture_output=True, text=True).stdout.splitlines()
    return [line.split(":")[9] for prev, line in zip([""] + out, out)
            if line.startswith("fpr:") and prev.startswith("pub:")]


DEBIAN, CENTOS, K8S = (key_text(n) for n in ("docker-debian.asc", "docker-centos.asc", "kubernetes.asc"))
TWO_KEYS_ONE_BLOCK = armour(dearmour(DEBIAN) + dearmour(CENTOS))

PARSER_CASES = {
    # id: (armoured text, fingerprints pgp_fingerprints prints, or None when it refuses the file)
    "docker-debian": (DEBIAN, [KEY_FINGERPRINTS["docker-debian.asc"]]),
    "docker-centos": (CENTOS, [KEY_FINGERPRINTS["docker-centos.asc"]]),
    "kubernetes (Version: header)": (K8S, [KEY_FINGERPRINTS["kubernetes.asc"]]),
    "CRLF line ends": (K8S.replace("\n", "\r\n"), [KEY_FINGERPRINTS["kubernetes.asc"]]),
    "re-armoured without headers": (armour(dearmour(K8S)), [KEY_FINGERPRINTS["kubernetes.asc"]]),
    "two primary keys in one block": (TWO_KEYS_ONE_BLOCK, [KEY_FINGERPRINTS["docker-debian.asc"],
                                                          KEY_FINGERPRINTS["docker-centos.asc"]]),
    "two armour blocks": (DEBIAN + CENTOS, None),
    "text before the block": ("see https://example.invalid\n" + DEBIAN, None),
    "text after the block": (DEBIAN + "trailing words\n", None),
    "not armoured": ("fake download of https://pkgs.k8s.io/core:/stable:/v1.36/deb/Release.key\n", None),
    "empty block": ("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n-----END PGP PUBLIC KEY BLOCK-----\n", None),
    "no END line": (DEBIAN.split("-----END")[0], None),
    "a packet cut short": (armour(dearmour(DEBIAN)[:300]), None),
    "not a packet": (armour(b"\x00" * 40), None),
    "a user id packet only": (armour(b"\xb4\x05hello"), None),
}


@pytest.mark.parametrize("case", list(PARSER_CASES))
def test_pgp_fingerprints(tmp_path, case):
    text, expected = PARSER_CASES[case]
    rc, got, err = fingerprints(tmp_path, text)
    if expected is None:
        assert rc == 1 and got == [] and err.strip(), (rc, got, err)  # refused with a reason
    else:
        assert rc == 0, err
        assert got == expected
        if shutil.which("gpg"):
            assert gpg_fingerprints(tmp_path, text) == expected


def test_one_changed_octet_of_key_material_is_another_fingerprint(tmp_path):
    rc, got, err = fingerprints(tmp_path, tampered(DEBIAN))
    assert rc == 0, err
    assert len(got) == 1 and got != [KEY_FINGERPRINTS["docker-debian.asc"]]


@pytest.mark.parametrize("text,pins,accepted", [
    (DEBIAN, ["9DC8 5822 9FC7 DD38 854A E2D8 8D81 803C 0EBF CD88"], True),  # spaced, as Docker prints it
    (DEBIAN, [KEY_FINGERPRINTS["docker-debian.asc"].lower()], True),
    (DEBIAN, [KEY_FINGERPRINTS["docker-centos.asc"]], False),
    (tampered(DEBIAN), [KEY_FINGERPRINTS["docker-debian.asc"]], False),
    # the pinned key plus one more primary key: the extra key would be trusted too
    (TWO_KEYS_ONE_BLOCK, [KEY_FINGERPRINTS["docker-debian.asc"]], False),
    (TWO_KEYS_ONE_BLOCK, [KEY_FINGERPRINTS["docker-debian.asc"], KEY_FINGERPRINTS["docker-centos.asc"]], True),
    (DEBIAN + CENTOS, [KEY_FINGERPRINTS["docker-debian.asc"], KEY_FINGERPRINTS["docker-centos.asc"]], False),
])
def test_key_is_pinned(tmp_path, text, pins, accepted):
    path = tmp_path / "key.asc"
    path.write_text(text)
    result = lib(tmp_path, 'key_is_pinned "$@"', str(path), *pins)
    assert result.returncode == (0 if accepted else 1), result.stdout + result.stderr


def test_the_scripts_pin_the_published_fingerprints():
    """The constants in the scripts are the fingerprints of the real keys (fixtures above)."""
    text = {name: (PROVISION / name).read_text() for name in ("runtime.sh", "kubernetes.sh")}
    pins = {
        "docker-debian.asc": ("runtime.sh", "DOCKER_DEB_KEY_FINGERPRINT"),
        "docker-centos.asc": ("runtime.sh", "DOCKER_RPM_KEY_FINGERPRINT"),
        "kubernetes.asc": ("kubernetes.sh", "KUBERNETES_KEY_FINGERPRINT"),
    }
    for key, (script, var) in pins.items():
        line = next(l for l in text[script].splitlines() if l.startswith(f"{var}="))
        assert line.split("=", 1)[1].strip('"').replace(" ", "") == KEY_FINGERPRINTS[key]


# --------------------------------------------------------------------------- on the node


def bare_debian(node):
    """Debian without docker.io, so runtime.sh configures Docker's repository."""
    state = node.state()
    state["packages"].pop("docker.io", None)
    node.save(state)
    for command in ("dockerd", "docker"):
        (node.stub / "bin" / command).unlink(missing_ok=True)


K8S_DEB_KEY = "/core:/stable:/v1.36/deb/Release.key"
K8S_RPM_KEY = "/core:/stable:/v1.36/rpm/repodata/repomd.xml.key"

#: id: (scenario, script, URL suffix served the wrong key, wrong key, files that must not appear,
#:      packages that must not be installed)
WRONG_KEY_CASES = {
    "debian kubernetes Release.key": (
        "debian-current-docker", "kubernetes.sh", K8S_DEB_KEY, "docker-debian.asc",
        ["etc/apt/keyrings/kubernetes-apt-keyring.asc", "etc/apt/sources.list.d/kubernetes.list"], "kubelet"),
    "debian docker gpg": (
        "debian-current-docker", "runtime.sh", "/linux/debian/gpg", "kubernetes.asc",
        ["etc/apt/keyrings/docker.asc", "etc/apt/sources.list.d/docker.list"], "docker-ce"),
    "el9 docker centos/gpg": (
        "el9-current-docker", "runtime.sh", "/linux/centos/gpg", "docker-debian.asc",
        ["etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-docker-ce", "etc/yum.repos.d/docker-ce.repo"], "docker-ce"),
    "el9 kubernetes repomd.xml.key": (
        "el9-current-docker", "kubernetes.sh", K8S_RPM_KEY, "docker-centos.asc",
        ["etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-kubernetes", "etc/yum.repos.d/kubernetes.repo"], "kubelet-1.36.0"),
    "el7 docker centos/gpg": (
        "el7-seed-2020", "runtime.sh", "/linux/centos/gpg", "kubernetes.asc",
        ["etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-docker-ce", "etc/yum.repos.d/docker-ce.repo"], "docker-ce-19.03.5"),
}


def served_url(env, family, suffix):
    return next(url for url in key_urls(env, family) if url.endswith(suffix))


def leftovers(node):
    return [str(p.relative_to(node.root)) for p in node.root.rglob("*.part.*")]


@pytest.mark.parametrize("case", list(WRONG_KEY_CASES))
def test_a_key_with_another_fingerprint_is_never_trusted(tmp_path, case):
    scenario, script, suffix, wrong, absent, package = WRONG_KEY_CASES[case]
    node, env, _ = prepare_scenario(tmp_path, scenario)
    if node.family == "debian":
        bare_debian(node)
    state = node.state()
    state["downloads"][served_url(env, node.family, suffix)] = str(KEYS / wrong)
    node.save(state)
    result = node.run(script, env, check=False)
    assert result.returncode != 0, case
    assert "is refused: it holds key " + KEY_FINGERPRINTS[wrong] in result.stderr
    for rel in absent:
        assert not (node.root / rel).exists(), rel
    assert leftovers(node) == []
    assert not contains(node.calls(), package)


#: id: (scenario, script and its arguments, URL that redirects to plain http, files that must not appear)
REDIRECT_CASES = {
    "debian kubernetes Release.key": ("debian-current-docker", ["kubernetes.sh"], K8S_DEB_KEY,
                                      ["etc/apt/keyrings/kubernetes-apt-keyring.asc"]),
    "el9 docker centos/gpg": ("el9-current-docker", ["runtime.sh"], "/linux/centos/gpg",
                              ["etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-docker-ce", "etc/yum.repos.d/docker-ce.repo"]),
    "el9 kubernetes repomd.xml.key": ("el9-current-docker", ["kubernetes.sh"], K8S_RPM_KEY,
                                      ["etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-kubernetes"]),
    "fetch.sh": ("debian-current-docker", ["fetch.sh"], "", ["var/cache/dslab/payload.bin"]),
}


@pytest.mark.parametrize("case", list(REDIRECT_CASES))
def test_a_redirect_to_plain_http_is_not_followed(tmp_path, case):
    """The stub follows a redirect as curl does unless --proto-redir forbids its scheme; the
    plain-http target serves exactly what the https URL should have, so only the scheme can fail it."""
    scenario, (script, *args), suffix, absent = REDIRECT_CASES[case]
    node, env, _ = prepare_scenario(tmp_path, scenario)
    state = node.state()
    if script == "fetch.sh":
        payload = tmp_path / "payload.bin"
        payload.write_bytes(b"payload\n")
        url = "https://example.invalid/payload.bin"
        args = [url, hashlib.sha256(b"payload\n").hexdigest(), "/var/cache/dslab/payload.bin"]
        target = str(payload)
    else:
        url = served_url(env, node.family, suffix)
        target = state["downloads"].pop(url)
    plain = "http://" + url.split("://", 1)[1]
    state["redirects"] = {url: plain}
    state["downloads"][plain] = target
    node.save(state)
    result = node.run(script, env, *args, check=False)
    assert result.returncode != 0
    assert 'Protocol "http" not supported or disabled' in result.stderr
    for rel in absent:
        assert not (node.root / rel).exists(), rel
    assert leftovers(node) == []


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_every_curl_call_is_https_only(tmp_path, scenario):
    """Bare boxes (no curl command, Debian without docker.io) download the most."""
    node, env, _ = prepare_scenario(tmp_path, scenario)
    without_curl(node)
    if node.family == "debian":
        bare_debian(node)
    run_all(node, env)
    curls = [c for c in node.calls() if c[0] == "curl"]
    assert len(curls) >= 2, curls  # the repository keys, and fetch.sh's pinned files
    for call in curls:
        pairs = list(zip(call, call[1:]))
        assert ("--proto", "=https") in pairs and ("--proto-redir", "=https") in pairs, call


def test_a_key_already_in_place_is_not_fetched_again_and_a_wrong_one_is_replaced(tmp_path):
    node, env, _ = prepare_scenario(tmp_path, "el9-current-docker")
    node.write("etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-docker-ce", key_text("docker-centos.asc"))
    node.run("runtime.sh", env)
    assert not contains(node.calls(), "https://download.docker.com/linux/centos/gpg")
    node2, env2, _ = prepare_scenario(tmp_path / "second", "el9-current-docker")
    node2.write("etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-docker-ce", key_text("docker-debian.asc"))
    node2.run("runtime.sh", env2)
    assert contains(node2.calls(), "https://download.docker.com/linux/centos/gpg")
    assert node2.read("etc/pki/rpm-gpg/RPM-GPG-KEY-dslab-docker-ce") == key_text("docker-centos.asc")


# --------------------------------------------------------------------------- the real curl


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 (http.server's name)
        status, value = self.routes.get(self.path, (404, b""))
        self.send_response(status)
        if status in (301, 302):
            self.send_header("Location", value)
            value = b""
        self.send_header("Content-Length", str(len(value)))
        self.end_headers()
        self.wfile.write(value)

    def log_message(self, *args):
        pass


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture
def loopback_servers(tmp_path):
    if not (shutil.which("curl") and shutil.which("openssl")):
        pytest.skip("curl and openssl are needed")
    cert, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(keyfile),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    handler = type("Handler", (_Handler,), {"routes": {}})
    plain = _serve(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))
    tls = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(keyfile))
    tls.socket = context.wrap_socket(tls.socket, server_side=True)
    _serve(tls)
    http_base = f"http://127.0.0.1:{plain.server_port}"
    https_base = f"https://127.0.0.1:{tls.server_port}"
    handler.routes.update({
        "/key": (200, b"the key\n"),
        "/to-http": (302, f"{http_base}/key"),
        "/to-https": (302, f"{https_base}/key"),
    })
    yield http_base, https_base, cert
    plain.shutdown()
    tls.shutdown()


@pytest.mark.parametrize("base,path,ok", [
    ("https", "/key", True),
    ("https", "/to-https", True),
    ("https", "/to-http", False),  # the redirect to plain http is refused
    ("http", "/key", False),       # and so is a plain-http URL
])
def test_dslab_curl_with_the_real_curl(tmp_path, loopback_servers, base, path, ok):
    """DSLAB_CURL against loopback servers; plain curl on the same URL is the control (it follows
    and fetches every one of them, so a refusal is the flags' doing)."""
    http_base, https_base, cert = loopback_servers
    url = (https_base if base == "https" else http_base) + path
    for command, expected in (("curl", True), ('"${DSLAB_CURL[@]}"', ok)):
        out = tmp_path / "out"
        out.unlink(missing_ok=True)
        result = lib(tmp_path, command + ' -fsSL --cacert "$1" -o "$2" "$3"', str(cert), str(out), url)
        assert (result.returncode == 0) == expected, (command, result.stderr)
        assert out.exists() == expected
        if expected:
            assert out.read_bytes() == b"the key\n"
        else:
            assert 'Protocol "http" not supported' in result.stderr
