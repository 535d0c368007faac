# make demo | make test | make setup | make clean
# Set-up is idempotent and stamped: re-running it when done takes well under a second.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vnetdp-setup
# Lab, demo, tests and benchmark use fixed namespace names: one run per machine.
# Every target that builds namespaces runs its command through $(call lab_locked,...):
# a second run waits for this lock (util-linux flock) instead of colliding. -o: processes the
# run leaves behind (a lab left up) do not inherit the lock; it ends with the command.
LAB_LOCK ?= /run/lock/vnetdp-lab.lock
lab_locked = flock -n $(LAB_LOCK) true || echo "make $@: another lab run holds $(LAB_LOCK); waiting"; \
             flock -o $(LAB_LOCK) $(1)
APT_PACKAGES := python3-bpfcc python3-venv iproute2 nftables iptables iperf3 iputils-ping ethtool \
                containernetworking-plugins sockperf ebtables python3-matplotlib \
                podman busybox-static golang-go golang-github-appc-cni-dev containerd gcc libc6-dev docker.io

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml tools/setup-host.sh Makefile
	bash tools/setup-host.sh $(APT_PACKAGES)
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -c 'import bcc, pyroute2, scapy, pytest'
	test -x $(VENV)/bin/vnetdp-lab
	touch $@

demo: setup
	$(call lab_locked,$(VENV)/bin/vnetdp-lab demo)

test: setup
	$(call lab_locked,$(PY) -m pytest -q -ra)

bench: setup
	$(call lab_locked,$(VENV)/bin/vnetdp-lab bench --out bench/results)

clean:
	rm -rf $(VENV) .pytest_cache

# The node image (deploy/kubernetes/): built from a debootstrapped Debian into a private podman
# store, then run by podman as the DaemonSet runs it, on a lab VM (tests/image/test_image.py;
# the store, containers and lab are removed afterwards). Slow (~3 min), so apart from `test`.
.PHONY: test-image
test-image: setup
	bash tools/setup-host.sh debootstrap podman runc
	$(call lab_locked,env VNETDP_IMAGE_TEST=1 $(PY) -m pytest -q -ra tests/image/test_image.py)
