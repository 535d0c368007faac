"""The host agent's interface document (SPEC §3), and a tiny server for it.

Each lab VM runs ``python -m vnetdp.lab.nmagent FILE PORT`` inside its own
namespace on 127.0.0.1, standing in for the cloud's host agent.
"""
from __future__ import annotations

import ipaddress
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
from xml.sax.saxutils import quoteattr

PATH = "/machine/plugins?comp=nmagent&type=getinterfaceinfov1"


def interface_document(mac: str, subnet: ipaddress.IPv4Network, primary: ipaddress.IPv4Address,
                       secondaries: list[ipaddress.IPv4Address]) -> str:
    """The XML document for one primary NIC."""
    addrs = [f'      <IPAddress Address="{primary}" IsPrimary="true"/>']
    addrs += [f'      <IPAddress Address="{a}" IsPrimary="false"/>' for a in secondaries]
    return "\n".join([
        "<Interfaces>",
        f'  <Interface MacAddress={quoteattr(mac.replace(":", "").upper())} IsPrimary="true">',
        f"    <IPSubnet Prefix={quoteattr(str(subnet))}>",
        *addrs,
        "    </IPSubnet>",
        "  </Interface>",
        "</Interfaces>",
    ]) + "\n"


def serve(doc_file: str, port: int) -> None:
    body = open(doc_file, "rb").read()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != PATH:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    HTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
