# make demo | make test | make setup | make clean
# Set-up is idempotent and stamped: re-running it when done takes well under a second.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vnetdp-setup
APT_PACKAGES := python3-bpfcc python3-venv iproute2 nftables iptables iperf3 iputils-ping ethtool \
                containernetworking-plugins sockperf ebtables python3-matplotlib \
                podman busybox-static

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml tools/setup-host.sh Makefile
	bash tools/setup-host.sh $(APT_PACKAGES)
	/usr/bin/python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -c 'import bcc, pyroute2, scapy, pytest'
	touch $@

demo: setup
	$(VENV)/bin/vnetdp lab demo

test: setup
	$(PY) -m pytest -q -ra

bench: setup
	$(VENV)/bin/vnetdp bench --out bench/results

clean:
	rm -rf $(VENV) .pytest_cache
