# ftplb: `make demo` and `make test` work on a fresh Debian machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian packages the integration tests drive as real peers.
# proftpd-core and pure-ftpd conflict with vsftpd (each Provides ftp-server), so
# they are unpacked into .deps/root instead of installed; their libraries are.
# proftpd-mod-proxy (the benchmark's inspect-mode peer) depends on proftpd-core.
FTPD_LIBS := libacl1 libcap2 libcrypt1 libhiredis0.14 libidn2-0 libmemcached11 \
	libmemcachedutil2 libncursesw6 libpam0g libpcre2-8-0 libpcre2-posix3 libssl3 \
	libtinfo6 zlib1g libsodium23 libsqlite3-0
DEB_PACKAGES := curl lftp vsftpd haproxy iproute2 nftables iptables openssl chromium \
	dnsmasq-base tmux redis-server keepalived $(FTPD_LIBS)
# kubectl (render kubernetes is checked with `kubectl kustomize`): Debian's
# kubernetes-client, unless a kubectl from elsewhere is already installed
# (the two packages would fight over /usr/bin/kubectl).
UNPACKED := proftpd-core pure-ftpd proftpd-mod-proxy
DEPS_ROOT := .deps/root

.PHONY: demo test lint typecheck unit bench soak deps venv clean

$(BIN)/ftplb: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/ftplb

# Installs the Debian packages only when one is missing (apt needs root).
deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	command -v kubectl >/dev/null || missing="$$missing kubernetes-client"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@$(MAKE) --no-print-directory $(UNPACKED_STAMP)

# Re-unpacks when the list changes (the stamp is named after it).
space := $() $()
UNPACKED_STAMP := .deps/unpacked-$(subst $(space),+,$(UNPACKED))
$(UNPACKED_STAMP):
	rm -rf .deps && mkdir -p .deps/debs
	cd .deps/debs && { apt-get download $(UNPACKED) 2>/dev/null || \
	  { apt-get update -qq && apt-get download $(UNPACKED); }; }
	for f in .deps/debs/*.deb; do dpkg-deb -x "$$f" $(DEPS_ROOT); done
	test -x $(DEPS_ROOT)/usr/sbin/proftpd && test -f $(DEPS_ROOT)/usr/lib/proftpd/mod_proxy.so
	touch $@

demo: venv
	$(BIN)/ftplb demo

lint: venv
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

test: deps venv lint typecheck
	$(BIN)/pytest

bench: deps venv
	$(BIN)/python bench/transfer.py --write-docs
	$(BIN)/python bench/sessions.py --write-docs
	$(BIN)/python bench/splice.py --write-docs
	$(BIN)/python bench/operator_view.py --write-docs
	$(BIN)/python bench/netns.py --write-docs

# Load with faults (bench/soak.py): SOAK_SECONDS per mode (default 300), then the
# same load without faults beside HAProxy; fails if a check does not hold.
soak: deps venv
	$(BIN)/python bench/soak.py --seconds $${SOAK_SECONDS:-300} $(SOAK_ARGS)

clean:
	rm -rf $(VENV) .deps build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
