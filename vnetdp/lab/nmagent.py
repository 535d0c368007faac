"""A lab VM's host documents, and a tiny server for them: the host agent's
interface document (SPEC §3) and the instance metadata service's network
document (IMDS; which secondary addresses have a public IP, SPEC §7).

Each lab VM runs ``python -m vnetdp.lab.nmagent DIR PORT`` inside its own
namespace on 127.0.0.1, standing in for the cloud's host agent and metadata
service. It serves ``DIR/interfaces.xml`` and ``DIR/metadata.json``, read at
every request: the lab rewrites the metadata document when it gives an
address a public IP (``vnetdp.lab.fabric_public_ips``).
"""
from __future__ import annotations

import ipaddress
import json
import os
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import quoteattr

PATH = "/machine/plugins?comp=nmagent&type=getinterfaceinfov1"
METADATA_PATH = "/metadata/instance/network"   # IMDS's, which also wants ?api-version= and "Metadata: true"
METADATA_QUERY = "api-version=2021-02-01"
INTERFACES_FILE, METADATA_FILE = "interfaces.xml", "metadata.json"


def _hex_mac(mac: str) -> str:
    return mac.replace(":", "").upper()


def interface_document(mac: str, subnet: ipaddress.IPv4Network, primary: ipaddress.IPv4Address,
                       secondaries: list[ipaddress.IPv4Address]) -> str:
    """The XML document for one primary NIC."""
    addrs = [f'      <IPAddress Address="{primary}" IsPrimary="true"/>']
    addrs += [f'      <IPAddress Address="{a}" IsPrimary="false"/>' for a in secondaries]
    return "\n".join([
        "<Interfaces>",
        f'  <Interface MacAddress={quoteattr(_hex_mac(mac))} IsPrimary="true">',
        f"    <IPSubnet Prefix={quoteattr(str(subnet))}>",
        *addrs,
        "    </IPSubnet>",
        "  </Interface>",
        "</Interfaces>",
    ]) + "\n"


def metadata_document(mac: str, subnet: ipaddress.IPv4Network, addresses: list[ipaddress.IPv4Address]) -> dict:
    """IMDS's network document for one NIC with ``addresses`` (the primary
    first), none of them with a public IP yet."""
    return {"interface": [{
        "ipv4": {"ipAddress": [{"privateIpAddress": str(a), "publicIpAddress": ""} for a in addresses],
                 "subnet": [{"address": str(subnet.network_address), "prefix": str(subnet.prefixlen)}]},
        "ipv6": {"ipAddress": []},
        "macAddress": _hex_mac(mac)}]}


def write_documents(directory: str, mac: str, subnet: ipaddress.IPv4Network, primary: ipaddress.IPv4Address,
                    secondaries: list[ipaddress.IPv4Address]) -> None:
    """Both documents of one VM into its ``directory``."""
    with open(os.path.join(directory, INTERFACES_FILE), "w") as f:
        f.write(interface_document(mac, subnet, primary, secondaries))
    with open(os.path.join(directory, METADATA_FILE), "w") as f:
        json.dump(metadata_document(mac, subnet, [primary, *secondaries]), f, indent=1)


def _document(path: str, headers) -> tuple[int, str, str | None]:
    """(HTTP status, content type, file name) for a request, as the host
    agent and IMDS answer it (IMDS: 400 without its header or api-version)."""
    if path == PATH:
        return 200, "application/xml", INTERFACES_FILE
    url = urllib.parse.urlsplit(path)
    if url.path != METADATA_PATH:
        return 404, "", None
    if headers.get("Metadata") != "true" or "api-version" not in urllib.parse.parse_qs(url.query):
        return 400, "", None
    return 200, "application/json", METADATA_FILE


def serve(directory: str, port: int) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, kind, name = _document(self.path, self.headers)
            if name is None:
                self.send_error(status)
                return
            with open(os.path.join(directory, name), "rb") as f:
                body = f.read()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
