"""Which pods have public IPs: the instance metadata network document read,
fetched with IMDS's header, the last document standing in when a fetch
fails, the endpoint flag an ADD writes, and the node setting naming the URL."""
from __future__ import annotations

import io
import ipaddress
import json

import pytest

from vnetdp import public_ips
from vnetdp.datapath import maps as M
from vnetdp.datapath import settings
from vnetdp.datapath.node import NodeSettings

IP = ipaddress.IPv4Address
URL = "http://127.0.0.1:8080/metadata/instance/network?api-version=2021-02-01"


def document(*entries: tuple[str, str], mac: str = "000D3A000002") -> str:
    """A network document as IMDS writes it: one interface with these (private, public) pairs."""
    return json.dumps({"interface": [{
        "ipv4": {"ipAddress": [{"privateIpAddress": private, "publicIpAddress": public}
                               for private, public in entries],
                 "subnet": [{"address": "10.3.0.0", "prefix": "16"}]},
        "ipv6": {"ipAddress": []}, "macAddress": mac}]})


def test_addresses_with_a_public_ip_are_read_from_every_interface():
    two = json.loads(document(("10.3.0.5", ""), ("10.3.2.1", "198.19.2.1")))
    two["interface"] += json.loads(document(("10.5.0.4", "198.19.9.9"), mac="000D3A000003"))["interface"]
    assert public_ips.parse(json.dumps(two)) == {IP("10.3.2.1"): IP("198.19.2.1"), IP("10.5.0.4"): IP("198.19.9.9")}


@pytest.mark.parametrize("text", ["<Interfaces/>", "{}", '{"interface": [{"ipv4": {}}]}',
                                  document(("10.3.2.1", "not an address"))])
def test_other_documents_are_a_clear_error(text):
    with pytest.raises(public_ips.MetadataError, match="not the network document"):
        public_ips.parse(text)


class Imds:
    """urllib.request.urlopen standing in for the metadata service: what it
    was asked, and what it answers (a document, or an error to raise)."""

    def __init__(self, answer: str | Exception) -> None:
        self.answer, self.requests = answer, []

    def __call__(self, request, timeout: float):
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return io.BytesIO(self.answer.encode())


@pytest.fixture
def imds(monkeypatch) -> Imds:
    fake = Imds(document(("10.3.2.1", "198.19.2.1"), ("10.3.2.2", "")))
    monkeypatch.setattr(public_ips.urllib.request, "urlopen", fake)
    return fake


def node(tmp_path, url: str | None = URL) -> NodeSettings:
    return NodeSettings(bpffs_dir=str(tmp_path / "bpffs"), state_dir=str(tmp_path), metadata_url=url)


def test_the_document_is_fetched_with_the_metadata_header_at_most_once_a_second(tmp_path, imds, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(public_ips.time, "time", lambda: clock[0])
    for _ in range(3):   # a burst of ADDs
        assert public_ips.current(node(tmp_path)) == {IP("10.3.2.1"): IP("198.19.2.1")}
    assert [(r.full_url, r.get_header("Metadata")) for r in imds.requests] == [(URL, "true")]
    imds.answer = document(("10.3.2.2", "198.19.2.2"))
    assert public_ips.current(node(tmp_path), max_age=0) == {IP("10.3.2.2"): IP("198.19.2.2")}   # reconcile's
    clock[0] += public_ips.FRESH_S
    assert public_ips.current(node(tmp_path)) == {IP("10.3.2.2"): IP("198.19.2.2")}
    assert len(imds.requests) == 3


def test_the_flag_follows_the_document(tmp_path, imds):
    assert public_ips.flag(node(tmp_path), IP("10.3.2.1")) == M.EP_PUBLIC_IP
    assert public_ips.flag(node(tmp_path), IP("10.3.2.2")) == 0


def test_without_a_metadata_url_nothing_is_fetched_and_no_pod_has_one(tmp_path, imds):
    assert public_ips.current(node(tmp_path, None)) == {}
    assert public_ips.flag(node(tmp_path, None), IP("10.3.2.1")) == 0
    assert imds.requests == []


def test_a_failed_fetch_keeps_the_last_document_of_the_same_url_and_is_not_retried_at_once(tmp_path, imds,
                                                                                               caplog):
    public_ips.current(node(tmp_path))
    imds.answer = public_ips.urllib.error.HTTPError(URL, 429, "Too many requests", {}, None)
    assert public_ips.current(node(tmp_path), max_age=0) == {IP("10.3.2.1"): IP("198.19.2.1")}
    assert "429" in caplog.text and "the last document fetched" in caplog.text
    assert public_ips.current(node(tmp_path)) == {IP("10.3.2.1"): IP("198.19.2.1")}
    assert len(imds.requests) == 2   # the failure was the last try: the next ADD does not wait for another
    assert public_ips.current(node(tmp_path, URL + "&other"), max_age=0) == {}   # another URL's is no stand-in


def test_an_unreachable_service_means_none_and_says_where(tmp_path):
    with pytest.raises(public_ips.MetadataError, match="127.0.0.1:9"):
        public_ips.fetch("http://127.0.0.1:9/metadata/instance/network")
    assert public_ips.current(node(tmp_path, "http://127.0.0.1:9/metadata/instance/network")) == {}


def test_the_node_setting_takes_http_urls_only():
    assert settings.parse({"metadataUrl": public_ips.DEFAULT_URL}) == {"metadata_url": public_ips.DEFAULT_URL}
    for bad in ("169.254.169.254", "file:///etc/passwd", 7):
        with pytest.raises(settings.SettingError, match="metadataUrl"):
            settings.parse({"metadataUrl": bad})
