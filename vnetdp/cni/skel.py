"""One call of a CNI plugin: read CNI_* and stdin, run the plugin's handler,
write the result or the spec's error object to stdout, return the exit code.

Logging is the process's (``vnetdp.cni.logs``): JSON lines in the plugin's
log file, and for every ADD, DEL, CHECK and GC one record of the call (who,
how it ended, its duration and phases), also appended to the node's call
spool for ``vnetdp metrics``."""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping

from vnetdp import defaults
from vnetdp.cni import logs
from vnetdp.cni.spec import SUPPORTED_VERSIONS, CniError, Code, Env, parse_config, version_result

log = logging.getLogger("vnetdp.cni")
Handler = Callable[[Env, dict], "dict | None"]


def _logging(conf: dict, plugin: str) -> None:
    """Log as ``conf`` says; an explicit ``logFile`` that cannot be opened is code 7."""
    level = getattr(logging, str(conf.get("logLevel", "info")).upper(), logging.INFO)
    try:
        handler, problem = logs.handler(conf, plugin)
    except (OSError, TypeError, ValueError) as e:
        _default_logging(plugin)  # so that the refusal itself is logged
        raise CniError(Code.INVALID_CONFIG, f"config field 'logFile' cannot be opened: {e}")
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if problem:
        log.warning("%s; logging to stderr", problem)


def _default_logging(plugin: str) -> None:
    """The node's default log, for calls that fail before their config is read."""
    handler, _ = logs.handler({}, plugin)
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)


def _finish(plugin: str, environ: Mapping[str, str], conf: dict | None, call: logs.Call,
            error: CniError | None) -> None:
    """Log the call's one record and spool it (ADD, DEL, CHECK, GC); other
    commands log only their failures."""
    command = environ.get("CNI_COMMAND", "")
    if command not in logs.RECORDED:
        if error is not None:
            log.error("%s failed: code %d: %s %s", command, error.code, error.msg, error.details)
        return
    record = call.record(plugin, environ, error.code if error else 0)
    fields = {"event": "cni-call", **{k: v for k, v in record.items() if k != "time"}}
    who = f"{record['container_id']}/{record['ifname']}"
    if error is None:
        log.info("%s %s: ok in %.3f s", command, who, record["duration_s"], extra={"fields": fields})
    else:
        fields.update(error=error.msg, **({"details": error.details} if error.details else {}))
        log.error("%s %s failed: code %d: %s", command, who, error.code, error.msg, extra={"fields": fields})
    asked = (conf or {}).get("stateDir")
    logs.CallSpool(defaults.state_dir(conf if isinstance(asked, str) else None)).append(record)


def run(plugin: str, handler: Handler, environ: Mapping[str, str] | None = None,
        stdin: bytes | None = None) -> int:
    """Run ``handler`` for the call described by ``environ`` and ``stdin``."""
    environ = os.environ if environ is None else environ
    version = SUPPORTED_VERSIONS[-1]
    conf = None
    with logs.timed_call() as call:
        try:
            raw = sys.stdin.buffer.read() if stdin is None else stdin
            env = Env.parse(environ)
            if env.command == "VERSION":
                try:
                    conf = json.loads(raw or b"{}")
                except ValueError:
                    conf = {}
                print(json.dumps(version_result(conf if isinstance(conf, dict) else {})))
                return 0
            conf = parse_config(raw)
            version = conf["cniVersion"]
            _logging(conf, plugin)
            log.debug("%s %s/%s netns=%s", env.command, env.container_id, env.ifname, env.netns)
            out = handler(env, conf)
            _finish(plugin, environ, conf, call, None)
            if out is not None:
                print(json.dumps(out))
            return 0
        except CniError as e:
            if conf is None:
                _default_logging(plugin)
            _finish(plugin, environ, conf, call, e)
            print(json.dumps(e.to_json(version)))
            return 1
        except Exception as e:
            if conf is None:
                _default_logging(plugin)
            log.exception("internal error")
            error = CniError(Code.INTERNAL, f"internal error: {e!r}")
            _finish(plugin, environ, conf, call, error)
            print(json.dumps(error.to_json(version)))
            return 1
