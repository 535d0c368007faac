"""Pods whose address has a public IP of its own (SPEC §7).

The cloud can give a secondary address a public IP: the fabric then
translates that address to it one to one, inbound and outbound, and traffic
from it must reach the fabric untranslated. The node learns which addresses
have one from the instance metadata service's network document (IMDS,
``/metadata/instance/network``: ``interface[].ipv4.ipAddress[]`` with
``privateIpAddress`` and ``publicIpAddress``), at the URL of the node setting
``metadataUrl``; unset, no address has one and every pod is translated. An
endpoint whose address has one is flagged ``EP_PUBLIC_IP`` and its traffic
beyond the VNet leaves untranslated (``FWD_PUBLIC_IP``).

An ADD reads the document as it was at most ``FRESH_S`` (1 s) before, so a
pod starts with what the document says; ``vnetdp reconcile`` reads it anew
and brings running pods in line. What was last fetched is kept in
``<state-dir>/public-ips.json``: it serves a burst of ADDs with one request
(IMDS answers 429 beyond a few requests a second per VM) and stands in when a
fetch fails (logged), so a pod that has a public IP keeps it then.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
import urllib.error
import urllib.request
from typing import Any

from vnetdp.datapath import maps as M
from vnetdp.datapath.node import NodeSettings
from vnetdp.files import atomic_write
from vnetdp.locks import flocked

#: the cloud's instance metadata service, as a node setting would name it
DEFAULT_URL = "http://169.254.169.254/metadata/instance/network?api-version=2021-02-01"
CACHE_FILE = "public-ips.json"
FRESH_S = 1.0   # a document fetched (or tried) this recently serves ADDs: IMDS allows a VM a few requests a second
TIMEOUT_S = 1.0
MAX_DOCUMENT = 1 << 20

log = logging.getLogger("vnetdp.public_ips")
PublicIps = dict[ipaddress.IPv4Address, ipaddress.IPv4Address]   # private -> public


class MetadataError(Exception):
    """The metadata document could not be fetched or read."""


def parse(text: str) -> PublicIps:
    """Every private IPv4 address of the document's interfaces that has a
    public IP, with it. A private address is the VM's own whatever NIC lists
    it, so no interface is picked; an empty publicIpAddress means none."""
    try:
        found = {}
        for interface in json.loads(text)["interface"]:
            for entry in interface["ipv4"]["ipAddress"]:
                if entry.get("publicIpAddress"):
                    found[ipaddress.IPv4Address(entry["privateIpAddress"])] = \
                        ipaddress.IPv4Address(entry["publicIpAddress"])
        return found
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise MetadataError(f"the metadata document is not the network document: {e!r}") from None


def fetch(url: str) -> PublicIps:
    """The public IPs the document at ``url`` lists (IMDS wants the header
    ``Metadata: true``)."""
    request = urllib.request.Request(url, headers={"Metadata": "true"})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
            body = resp.read(MAX_DOCUMENT + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise MetadataError(f"cannot fetch the metadata document from {url}: {e}") from None
    if len(body) > MAX_DOCUMENT:
        raise MetadataError(f"the metadata document from {url} is larger than {MAX_DOCUMENT} bytes")
    return parse(body.decode(errors="replace"))


def _cached(path: str, url: str) -> tuple[PublicIps, float] | None:
    """What was last fetched from ``url``, and when it was fetched or tried."""
    try:
        with open(path) as f:
            saved: dict[str, Any] = json.load(f)
        if saved["url"] != url:
            return None
        return ({ipaddress.IPv4Address(k): ipaddress.IPv4Address(v) for k, v in saved["public"].items()},
                float(saved["tried"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def current(settings: NodeSettings, max_age: float = FRESH_S) -> PublicIps:
    """The node's addresses that have a public IP, as the document said at
    most ``max_age`` seconds ago (0: now); what was last fetched from the same
    URL when it cannot be read (logged); none when nothing ever was or no
    ``metadataUrl`` is set. One process fetches at a time, so a burst of
    ADDs asks once."""
    url = settings.metadata_url
    if not url:
        return {}
    path = os.path.join(settings.state_dir, CACHE_FILE)
    with flocked(path + ".lock"):
        cached = _cached(path, url)
        if cached is not None and time.time() - cached[1] < max_age:
            return cached[0]
        try:
            found = fetch(url)
        except MetadataError as e:
            found = cached[0] if cached is not None else {}
            log.warning("%s; using %s", e, "the last document fetched" if cached is not None else "none")
        atomic_write(path, json.dumps({"url": url, "tried": time.time(),
                                       "public": {str(k): str(v) for k, v in found.items()}}))
        return found


def flag(settings: NodeSettings, address: ipaddress.IPv4Address) -> int:
    """The endpoint flag an endpoint at ``address`` gets now: EP_PUBLIC_IP or 0."""
    return M.EP_PUBLIC_IP if address in current(settings) else 0
