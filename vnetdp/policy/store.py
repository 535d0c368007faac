"""Rule sets on disk, the endpoints they select, and the sets compiled from
them (SPEC §11).

``<state-dir>/policy/``:

- ``sets/<name>.json``: a rule set, the group as its file gave it, its
  selectors and its revision (one more at each apply);
- ``compiled.json``: the compiled sets the datapath holds, by id: which rule
  set and revision, the VNet prefixes (tags) and the rules (by index) each
  was compiled with, and the rules' names, by which drops are shown; and per
  rule set, revision and VNet prefixes the rules each local prefix gets
  (``compile.local_classes``: what an ADD reads instead of the group);
- ``lock``: apply, delete and each ADD's lookup, one at a time.

An endpoint (a ``Member``) gets the rule set that selects it most
specifically: its pod by name, then its pod's namespace (``ns/*``), then the
longest address prefix holding its address, then its Docker network, then
the node's default. Two rule sets never claim the same selector.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field

from vnetdp.files import atomic_write, json_records
from vnetdp.locks import flocked
from vnetdp.policy import nsg as N

POLICY_DIR = "policy"
DOCKER_TAG = "docker:"          # a pod record's network for a Docker endpoint (vnetdp.docker.records)
#: a Kubernetes namespace or pod name (DNS-1123 subdomain, loosely)
_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_DOCKER_ID = re.compile(r"[0-9a-f]{12,64}")


class PolicyError(ValueError):
    """A rule set or selector the node refuses; the message says which and why."""


@dataclass(frozen=True)
class Member:
    """An endpoint as selectors see it."""

    address: ipaddress.IPv4Address
    k8s_namespace: str = ""
    k8s_pod: str = ""
    network: str = ""           # the CNI network's name, or docker:<network ID>

    def describe(self) -> str:
        pod = f" {self.k8s_namespace}/{self.k8s_pod}" if self.k8s_pod else ""
        return f"{self.address}{pod}"


@dataclass(frozen=True)
class Selectors:
    pods: tuple[str, ...] = ()              # "namespace/name" or "namespace/*"
    addresses: tuple[str, ...] = ()         # IPv4 prefixes (an address: its /32)
    docker_networks: tuple[str, ...] = ()   # network IDs, or their first 12 or more digits
    node_default: bool = False

    @classmethod
    def parse(cls, pods: Iterable[str] = (), addresses: Iterable[str] = (), docker_networks: Iterable[str] = (),
              node_default: bool = False) -> Selectors:
        """Selectors as an operator gives them; PolicyError naming a bad one."""
        for pod in pods:
            namespace, sep, name = pod.partition("/")
            if not (sep and _K8S_NAME.fullmatch(namespace) and (name == "*" or _K8S_NAME.fullmatch(name))):
                raise PolicyError(f"pod selector {pod!r} is not namespace/name or namespace/*")
        nets = []
        for a in addresses:
            try:
                nets.append(str(ipaddress.IPv4Network(a)))
            except ValueError as e:
                raise PolicyError(f"address selector {a!r} is not an IPv4 address or prefix: {e}") from None
        for d in docker_networks:
            if not _DOCKER_ID.fullmatch(d):
                raise PolicyError(f"Docker network selector {d!r} is not a network ID (12 to 64 hex digits, "
                                  "as docker network ls --no-trunc shows it)")
        selectors = cls(tuple(dict.fromkeys(pods)), tuple(dict.fromkeys(nets)),
                        tuple(dict.fromkeys(docker_networks)), node_default)
        if not selectors.claims():
            raise PolicyError("say which endpoints the rule set is for: pods, addresses, Docker networks "
                              "or the node's default")
        return selectors

    def claims(self) -> set[tuple[str, str]]:
        """What it selects by, as (kind, value): two rule sets never share one."""
        return ({("pod", p) for p in self.pods} | {("address", a) for a in self.addresses}
                | {("docker network", d) for d in self.docker_networks}
                | ({("node default", "")} if self.node_default else set()))

    def rank(self, member: Member) -> tuple[int, int] | None:
        """How specifically it selects ``member`` (higher wins); None when it does not."""
        if member.k8s_pod and f"{member.k8s_namespace}/{member.k8s_pod}" in self.pods:
            return (4, 0)
        if member.k8s_namespace and f"{member.k8s_namespace}/*" in self.pods:
            return (3, 0)
        lengths = [n.prefixlen for n in map(ipaddress.IPv4Network, self.addresses) if member.address in n]
        if lengths:
            return (2, max(lengths))
        docker = member.network.removeprefix(DOCKER_TAG) if member.network.startswith(DOCKER_TAG) else None
        if docker and any(docker.startswith(d) for d in self.docker_networks):
            return (1, 0)
        return (0, 0) if self.node_default else None

    def needs_identity(self) -> bool:
        """Whether it selects by more than the address."""
        return bool(self.pods or self.docker_networks)

    def describe(self) -> str:
        parts = [*(f"pod {p}" for p in self.pods), *(f"address {a}" for a in self.addresses),
                 *(f"docker network {d[:12]}" for d in self.docker_networks)]
        return ", ".join(parts + (["node default"] if self.node_default else []))


@dataclass(frozen=True)
class RuleSet:
    name: str
    document: dict              # the group, as its file gave it
    selectors: Selectors
    revision: int = 1

    def group(self) -> N.Nsg:
        return N.parse(self.document)

    def to_json(self) -> dict:
        return {"name": self.name, "revision": self.revision, "selectors": asdict(self.selectors),
                "group": self.document}

    @classmethod
    def from_json(cls, data: dict) -> RuleSet:
        s = data["selectors"]
        return cls(data["name"], data["group"], Selectors(tuple(s["pods"]), tuple(s["addresses"]),
                                                           tuple(s["docker_networks"]), s["node_default"]),
                   data["revision"])


def read_document(path: str) -> dict:
    """A group's JSON document from a file, refused whole (NsgError naming
    the file, the rule and the field) when the model refuses it."""
    N.load(path)
    with open(path) as f:
        return json.load(f)


def select(rule_sets: Iterable[RuleSet], member: Member) -> RuleSet | None:
    """The rule set that selects ``member`` most specifically."""
    ranked = [(rank, rs.name, rs) for rs in rule_sets if (rank := rs.selectors.rank(member)) is not None]
    return max(ranked, key=lambda r: r[:2])[2] if ranked else None


def check_claims(rule_sets: Iterable[RuleSet], new: RuleSet) -> None:
    """PolicyError when another rule set claims a selector of ``new``."""
    for other in rule_sets:
        if other.name != new.name:
            shared = sorted(other.selectors.claims() & new.selectors.claims())
            if shared:
                kind, value = shared[0]
                raise PolicyError(f"rule set {other.name!r} already selects {kind} {value}".rstrip()
                                  + f"; delete it or change its selectors before giving it to {new.name!r}")


@dataclass(frozen=True)
class Compiled:
    """A compiled set the datapath holds."""

    id: int
    name: str                   # the rule set's
    revision: int
    scope: tuple[str, ...]      # the VNet prefixes the tags meant
    rules: tuple[int, ...]      # the rules it holds (compile.applicable)
    rule_names: tuple[str, ...]  # every rule of the group, by index

    @property
    def key(self) -> tuple:
        return (self.name, self.revision, self.scope, self.rules)


LocalClasses = dict[tuple[int, int], tuple[int, ...]]  # compile.local_classes


@dataclass
class Registry:
    sets: dict[int, Compiled] = field(default_factory=dict)
    next_id: int = 1
    #: (rule set, revision, scope) -> its local classes
    locals: dict[tuple[str, int, tuple[str, ...]], LocalClasses] = field(default_factory=dict)

    def find(self, key: tuple) -> Compiled | None:
        return next((c for c in self.sets.values() if c.key == key), None)

    def allocate(self) -> int:
        self.next_id += 1
        return self.next_id - 1


class Store:
    """The policy state of one node."""

    def __init__(self, state_dir: str) -> None:
        self.dir = os.path.join(state_dir, POLICY_DIR)
        self.sets_dir = os.path.join(self.dir, "sets")
        self.registry_path = os.path.join(self.dir, "compiled.json")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with flocked(os.path.join(self.dir, "lock")):
            yield

    def _path(self, name: str) -> str:
        return os.path.join(self.sets_dir, f"{name}.json")

    def has_rule_sets(self) -> bool:
        """Cheap: whether any rule set is stored."""
        try:
            return any(n.endswith(".json") for n in os.listdir(self.sets_dir))
        except FileNotFoundError:
            return False

    def rule_sets(self) -> list[RuleSet]:
        return sorted(json_records(self.sets_dir, lambda **data: RuleSet.from_json(data)), key=lambda r: r.name)

    def get(self, name: str) -> RuleSet | None:
        return next((r for r in self.rule_sets() if r.name == name), None)

    def save(self, rule_set: RuleSet) -> None:
        os.makedirs(self.sets_dir, exist_ok=True)
        atomic_write(self._path(rule_set.name), json.dumps(rule_set.to_json(), indent=1))

    def remove(self, name: str) -> bool:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            return False
        return True

    def registry(self) -> Registry:
        try:
            with open(self.registry_path) as f:
                data = json.load(f)
        except FileNotFoundError:
            return Registry()
        sets = {c["id"]: Compiled(c["id"], c["name"], c["revision"], tuple(c["scope"]), tuple(c["rules"]),
                                  tuple(c["rule_names"])) for c in data["sets"]}
        local = {(c["name"], c["revision"], tuple(c["scope"])): {(a, n): tuple(rules) for a, n, rules in c["classes"]}
                 for c in data["locals"]}
        return Registry(sets, data["next_id"], local)

    def save_registry(self, registry: Registry) -> None:
        os.makedirs(self.dir, exist_ok=True)
        local = [{"name": name, "revision": revision, "scope": scope,
                  "classes": [[a, n, rules] for (a, n), rules in classes.items()]}
                 for (name, revision, scope), classes in registry.locals.items()]
        atomic_write(self.registry_path, json.dumps(
            {"next_id": registry.next_id, "sets": [asdict(c) for c in registry.sets.values()], "locals": local}))
