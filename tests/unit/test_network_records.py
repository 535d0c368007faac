"""The network plugin's pod records (vnetdp.network.records): one file per
attachment, read back whole, records of earlier releases still read, broken
files skipped."""
from __future__ import annotations

import json
import os

import pytest

from vnetdp.network.records import RECORDS_DIR, PodRecord, PodRecords

WEB = PodRecord("c1", "eth0", "/run/netns/p1", "10.3.1.2", "vnetdp-ipam", "10.3.0.0/16", "10.3.0.1",
                "default", "web", "net1")


@pytest.fixture
def records(tmp_path) -> PodRecords:
    return PodRecords(str(tmp_path))


def test_a_saved_record_reads_back_whole_with_its_network(records, tmp_path):
    records.save(WEB)
    assert records.get("c1", "eth0") == WEB and records.all() == [WEB]
    assert records.get("c1", "eth1") is None
    assert os.listdir(tmp_path) == [RECORDS_DIR] == ["attachments"]  # the first release's name


def test_save_replaces_and_remove_forgets_one_attachment(records):
    other = PodRecord("c1", "eth1", "/run/netns/p1", "10.3.1.3", "host-local")
    records.save(WEB)
    records.save(other)
    moved = PodRecord(**{**WEB.__dict__, "address": "10.3.1.9"})
    records.save(moved)
    assert sorted(records.all(), key=lambda r: r.ifname) == [moved, other]
    records.remove("c1", "eth0")
    records.remove("c1", "eth0")  # twice: no error
    assert records.all() == [other] and records.get("c1", "eth0") is None


def test_a_record_of_an_earlier_release_reads_with_an_empty_network(records):
    records.save(WEB)
    [name] = os.listdir(records.dir)
    old = {k: v for k, v in json.load(open(os.path.join(records.dir, name))).items() if k != "network"}
    with open(os.path.join(records.dir, name), "w") as f:
        json.dump(old, f)
    assert records.get("c1", "eth0") == PodRecord(**{**WEB.__dict__, "network": ""})


def test_broken_and_foreign_files_are_skipped(records):
    records.save(WEB)
    for name, content in [("broken.json", "{"), ("partial.json", '{"container_id": "c2"}'),
                          ("notes.txt", json.dumps(WEB.__dict__))]:
        with open(os.path.join(records.dir, name), "w") as f:
            f.write(content)
    assert records.all() == [WEB]


def test_no_directory_means_no_records(records):
    assert records.all() == [] and records.get("c1", "eth0") is None
    records.remove("c1", "eth0")
