"""One call of a CNI plugin: read CNI_* and stdin, run the plugin's handler,
write the result or the spec's error object to stdout, return the exit code."""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Mapping

from vnetdp.cni.spec import SUPPORTED_VERSIONS, CniError, Code, Env, parse_config, version_result

log = logging.getLogger("vnetdp.cni")
Handler = Callable[[Env, dict], "dict | None"]


def _logging(conf: dict, plugin: str) -> None:
    level = getattr(logging, str(conf.get("logLevel", "info")).upper(), logging.INFO)
    try:
        handler = logging.FileHandler(conf["logFile"]) if conf.get("logFile") else logging.StreamHandler(sys.stderr)
    except (OSError, TypeError, ValueError) as e:
        raise CniError(Code.INVALID_CONFIG, f"config field 'logFile' cannot be opened: {e}")
    handler.setFormatter(logging.Formatter(f"%(asctime)s {plugin}[%(process)d] %(levelname)s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def run(plugin: str, handler: Handler, environ: Mapping[str, str] | None = None,
        stdin: bytes | None = None) -> int:
    """Run ``handler`` for the call described by ``environ`` and ``stdin``."""
    environ = os.environ if environ is None else environ
    version = SUPPORTED_VERSIONS[-1]
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
        if out is not None:
            print(json.dumps(out))
        return 0
    except CniError as e:
        log.error("%s failed: code %d: %s %s", environ.get("CNI_COMMAND"), e.code, e.msg, e.details)
        print(json.dumps(e.to_json(version)))
        return 1
    except Exception as e:
        log.exception("internal error")
        print(json.dumps(CniError(Code.INTERNAL, f"internal error: {e!r}").to_json(version)))
        return 1
