"""Plugin-process logging and the call spool (vnetdp.cni.logs, through
vnetdp.cni.skel): JSON lines, one record per call with its phases, the
default log directory and its fallback to stderr, size rotation shared by
many processes, and the spool read across rotations."""
from __future__ import annotations

import json
import multiprocessing
import os

import pytest

from helpers import ADD_ENV
from vnetdp.cni import logs, skel
from vnetdp.cni.spec import CniError, Code


@pytest.fixture(autouse=True)
def log_dir(tmp_path, monkeypatch):
    """The node's log directory for these tests (never /var/log)."""
    path = tmp_path / "log"
    path.mkdir()
    monkeypatch.setenv(logs.LOG_DIR_VAR, str(path))
    return path


def conf(tmp_path, **extra) -> bytes:
    return json.dumps({"cniVersion": "1.1.0", "name": "net1", "type": "vnetdp",
                       "stateDir": str(tmp_path), **extra}).encode()


def lines(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def timed_handler(env, conf):
    with logs.phase("ipam"):
        pass
    with logs.phase("endpoint"):
        pass
    with logs.phase("ipam"):  # a phase run twice adds up
        pass
    return {"cniVersion": conf["cniVersion"]}


def test_a_call_logs_one_json_record_with_its_phases_and_spools_it(tmp_path, log_dir, capsys):
    environ = {**ADD_ENV, "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;IgnoreUnknown=1"}
    assert skel.run("vnetdp", timed_handler, environ, conf(tmp_path)) == 0
    assert json.loads(capsys.readouterr().out) == {"cniVersion": "1.1.0"}
    [line] = [x for x in lines(log_dir / "vnetdp.log") if x.get("event") == "cni-call"]
    assert line["level"] == "info" and line["plugin"] == "vnetdp" and line["pid"] == os.getpid()
    assert (line["command"], line["container_id"], line["ifname"], line["pod"]) == ("ADD", "c1", "eth0",
                                                                                    "default/web-0")
    assert (line["result"], line["code"]) == ("ok", 0)
    assert set(line["phases"]) == {"ipam", "endpoint", "total"}
    assert line["phases"]["total"] == line["duration_s"] >= line["phases"]["ipam"] + line["phases"]["endpoint"]
    assert line["time"].endswith("+00:00")
    [spooled] = lines(tmp_path / logs.SPOOL_FILE)
    assert {k: spooled[k] for k in ("plugin", "command", "container_id", "pod", "result", "code", "phases")} == \
        {k: line[k] for k in ("plugin", "command", "container_id", "pod", "result", "code", "phases")}
    assert isinstance(spooled["time"], float)


def test_a_failing_call_records_its_code_and_message(tmp_path, log_dir, capsys):
    def refuse(env, conf):
        with logs.phase("ipam"):
            raise CniError(Code.POOL_EXHAUSTED, "no free address", "add secondary IP addresses")

    assert skel.run("vnetdp", refuse, ADD_ENV, conf(tmp_path)) == 1
    assert json.loads(capsys.readouterr().out)["code"] == Code.POOL_EXHAUSTED
    [line] = [x for x in lines(log_dir / "vnetdp.log") if x.get("event") == "cni-call"]
    assert (line["level"], line["result"], line["code"]) == ("error", "error", 100)
    assert line["error"] == "no free address" and line["details"] == "add secondary IP addresses"
    assert "ipam" in line["phases"]
    [spooled] = lines(tmp_path / logs.SPOOL_FILE)
    assert (spooled["result"], spooled["code"]) == ("error", 100) and "error" not in spooled


def test_an_internal_error_is_code_107_with_the_traceback_in_the_log(tmp_path, log_dir, capsys):
    def crash(env, conf):
        raise RuntimeError("bug")

    assert skel.run("vnetdp", crash, ADD_ENV, conf(tmp_path)) == 1
    logged = lines(log_dir / "vnetdp.log")
    assert any("RuntimeError: bug" in x.get("traceback", "") for x in logged)
    assert [x["code"] for x in logged if x.get("event") == "cni-call"] == [Code.INTERNAL]


def test_a_call_failing_before_its_config_is_read_is_recorded_too(tmp_path, log_dir, monkeypatch, capsys):
    monkeypatch.setenv("VNETDP_STATE_DIR", str(tmp_path))
    assert skel.run("vnetdp", timed_handler, ADD_ENV, b'{"cniVersion": ') == 1
    [line] = [x for x in lines(log_dir / "vnetdp.log") if x.get("event") == "cni-call"]
    assert line["code"] == Code.DECODING_FAILURE
    assert lines(tmp_path / logs.SPOOL_FILE)[0]["code"] == Code.DECODING_FAILURE


def test_each_plugin_has_its_own_default_file(tmp_path, log_dir, capsys):
    skel.run("vnetdp-ipam", timed_handler, ADD_ENV, conf(tmp_path))
    assert lines(log_dir / "vnetdp-ipam.log")[-1]["plugin"] == "vnetdp-ipam"
    assert not (log_dir / "vnetdp.log").exists()


def test_status_and_version_are_not_recorded(tmp_path, log_dir, capsys):
    env = {**ADD_ENV, "CNI_COMMAND": "STATUS"}
    assert skel.run("vnetdp", lambda env, conf: None, env, conf(tmp_path)) == 0
    assert skel.run("vnetdp", timed_handler, {"CNI_COMMAND": "VERSION"}, b"{}") == 0
    assert not (tmp_path / logs.SPOOL_FILE).exists()
    logged = lines(log_dir / "vnetdp.log") if (log_dir / "vnetdp.log").exists() else []
    assert not [x for x in logged if x.get("event") == "cni-call"]


def test_an_unwritable_log_directory_falls_back_to_stderr(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setenv(logs.LOG_DIR_VAR, str(blocker))  # ENOTDIR, even for root
    assert skel.run("vnetdp", timed_handler, ADD_ENV, conf(tmp_path)) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == {"cniVersion": "1.1.0"}
    records = [json.loads(line) for line in err.splitlines()]
    assert "logging to stderr" in records[0]["msg"]
    assert records[-1]["event"] == "cni-call" and records[-1]["result"] == "ok"


def test_an_explicit_log_file_that_cannot_be_opened_is_code_7(tmp_path, log_dir, capsys):
    rc = skel.run("vnetdp", timed_handler, ADD_ENV, conf(tmp_path, logFile=str(tmp_path / "no" / "such.log")))
    out = json.loads(capsys.readouterr().out)
    assert rc == 1 and out["code"] == Code.INVALID_CONFIG and "logFile" in out["msg"]
    assert lines(log_dir / "vnetdp.log")[-1]["code"] == Code.INVALID_CONFIG  # logged where the node logs


def test_an_explicit_log_file_gets_the_records(tmp_path, log_dir, capsys):
    target = tmp_path / "mine.log"
    assert skel.run("vnetdp", timed_handler, ADD_ENV, conf(tmp_path, logFile=str(target))) == 0
    assert lines(target)[-1]["event"] == "cni-call"
    assert not (log_dir / "vnetdp.log").exists()


def test_phase_outside_a_call_times_nothing():
    with logs.phase("ipam"):
        pass
    with logs.timed_call() as call:
        with logs.phase("attach"):
            pass
    assert list(call.phases) == ["attach"]


# --- rotation -------------------------------------------------------------------------------
def test_a_full_file_rotates_keeping_its_backups(tmp_path):
    path = str(tmp_path / "x.log")
    for i in range(50):
        logs.append_rotating(path, b"%04d %s\n" % (i, b"x" * 90), max_bytes=1000, backups=2)
    files = logs.rotated_files(path, 2)
    assert all(os.path.exists(f) for f in files) and not os.path.exists(path + ".3")
    assert all(os.path.getsize(f) <= 1000 for f in files)
    kept = [line for f in reversed(files) for line in open(f, "rb").read().splitlines()]
    numbers = [int(line.split()[0]) for line in kept]
    assert numbers == list(range(numbers[0], 50))  # newest last, nothing lost within what is kept


def _append_many(path: str, writer: int, count: int) -> None:
    for i in range(count):
        logs.append_rotating(path, json.dumps({"writer": writer, "i": i, "pad": "p" * 200}).encode() + b"\n",
                             max_bytes=20_000, backups=1000)


def test_many_processes_appending_lose_no_line_and_split_none(tmp_path):
    """Each rotation happens once, under the file's lock: with room for every
    backup, every line written is found whole in exactly one file."""
    path = str(tmp_path / "shared.log")
    procs = [multiprocessing.Process(target=_append_many, args=(path, w, 300)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    seen = []
    for f in logs.rotated_files(path, 1000):
        if os.path.exists(f):
            seen += [json.loads(line) for line in open(f, "rb").read().splitlines()]
    assert sorted((x["writer"], x["i"]) for x in seen) == [(w, i) for w in range(4) for i in range(300)]
    assert os.path.exists(path + ".2")  # it did rotate, many times


def test_the_spool_reader_returns_each_record_once_across_rotations(tmp_path):
    spool = logs.CallSpool(str(tmp_path), max_bytes=300, backups=2)
    reader = logs.SpoolReader(spool)
    assert reader.read() == []
    got = []
    for i in range(40):
        assert spool.append({"n": i, "pad": "x" * 40})
        if i % 3 == 0:  # rotations happen between reads, sometimes two of them
            got += reader.read()
    got += reader.read()
    assert [r["n"] for r in got] == list(range(40))
    assert reader.read() == []


def test_a_new_spool_reader_starts_from_what_the_files_hold(tmp_path):
    spool = logs.CallSpool(str(tmp_path), max_bytes=300, backups=1)
    for i in range(20):
        spool.append({"n": i, "pad": "x" * 40})
    numbers = [r["n"] for r in logs.SpoolReader(spool).read()]
    assert numbers == list(range(numbers[0], 20)) and 0 < numbers[0]  # the oldest rotated out


def test_the_spool_reader_waits_for_a_line_being_written(tmp_path):
    spool = logs.CallSpool(str(tmp_path))
    spool.append({"n": 1})
    with open(spool.path, "ab") as f:
        f.write(b'{"n": 2')
    reader = logs.SpoolReader(spool)
    assert reader.read() == [{"n": 1}]
    with open(spool.path, "ab") as f:
        f.write(b'}\nnot json\n')
    assert reader.read() == [{"n": 2}]


def test_no_state_directory_no_spool(tmp_path):
    assert not logs.CallSpool(str(tmp_path / "missing")).append({"n": 1})
    assert not (tmp_path / "missing").exists()
