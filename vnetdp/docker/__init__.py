"""The Docker network and IPAM driver (SPEC §6): libnetwork's remote plugin
protocol over a unix socket, served by ``vnetdp docker-plugin``.

- ``protocol``: HTTP/JSON over the unix socket, typed request bodies, errors
  as ``{"Err": ...}`` (never an HTML page);
- ``ipam``: the IPAM driver, on the node's one IPAM store (``vnetdp.ipam``),
  each address owned by Docker or by CNI, never both;
- ``network``: the network driver (networks, endpoints, join/leave), the
  datapath part behind a plumbing object;
- ``plumbing``: the real datapath part (``vnetdp.endpoint``'s host side);
- ``records``: what survives the plugin: a record per network, the endpoint's
  pod record beside CNI's, locks;
- ``plugin``: the method table and ``serve``.
"""

DEFAULT_SOCKET = "/run/docker/plugins/vnetdp.sock"   # Docker finds plugin "vnetdp" there
