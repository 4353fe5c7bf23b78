.DEFAULT_GOAL := help

KPKI ?= target/release/kpki
# Targets that run kpki build it first only when KPKI is the binary this repository builds.
KPKI_BUILD := $(if $(filter target/release/kpki,$(KPKI)),build)

.PHONY: all
all: build pki ## Build kpki and bring pki/ up to date

.PHONY: build
build: ## Build kpki (target/release/kpki)
	cargo build --release --locked

.PHONY: pki
pki: $(KPKI_BUILD) ## Create every missing CA, key and certificate of pki/kpki.toml
	$(KPKI) init

.PHONY: issue
issue: $(KPKI_BUILD) ## Reissue a certificate: make issue PROFILE=kubelet NODE=node-02 (see kpki issue --help)
	$(if $(PROFILE),,$(error PROFILE is required, e.g. make issue PROFILE=kubelet NODE=node-02))
	$(KPKI) issue $(PROFILE) $(NODE)

.PHONY: kubeconfig
kubeconfig: $(KPKI_BUILD) ## Write the admin kubeconfig to pki/admin.kubeconfig (git-ignored)
	$(KPKI) kubeconfig admin -o pki/admin.kubeconfig

.PHONY: status
status: $(KPKI_BUILD) ## Show every certificate's expiry and state (exit 1 when something needs action)
	$(KPKI) status

.PHONY: verify
verify: $(KPKI_BUILD) ## Deep check of chains, keys, SANs, secrets' recipients, Nix files and git
	$(KPKI) verify

.PHONY: rotate
rotate: $(KPKI_BUILD) ## Renew what is due or drifted and re-encrypt what changed recipients (DRY_RUN=1 to preview)
	$(KPKI) rotate $(if $(DRY_RUN),--dry-run)

.PHONY: prune
prune: $(KPKI_BUILD) ## Carry out removals from the config: delete, revoke, reissue (DRY_RUN=1 to preview)
	$(KPKI) rotate --prune $(if $(DRY_RUN),--dry-run)

.PHONY: revoke
revoke: $(KPKI_BUILD) ## Revoke an etcd certificate and reissue it: make revoke NAME=node-02/etcd-peer
	$(if $(NAME),,$(error NAME is required, e.g. make revoke NAME=node-02/etcd-peer))
	$(KPKI) revoke $(NAME)

.PHONY: test
test: ## Run the whole test suite (needs root, Go, openssl, age, etcd, nix-instantiate: see .ci/run)
	cargo test --locked

.PHONY: test-quick
test-quick: ## Unit tests, the commands' logic in process, and the checks that need neither root nor other programs (a laptop's loop)
	cargo test --locked --lib
	cargo test --locked --test logic
	cargo test --locked --test it -- config_errors:: fuzz_corpus:: layers::

# The control plane the end-to-end test runs, built from k8s.io/kubernetes through the Go module
# proxy (tests/k8s/go.mod pins the version), plus etcd 3.6, Kubernetes' fake container runtime for
# the kubelet, and the test's stand-in server.
K8S_CMDS := kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet
K8S_SOURCES := tests/k8s/go.mod tests/k8s/go.sum $(wildcard tests/k8s/*/main.go)

.PHONY: k8s
k8s: target/k8s/.built ## Build kube-apiserver, controller-manager, scheduler, kubelet, kubectl and etcd into target/k8s (first time: minutes)

target/k8s/.built: $(K8S_SOURCES)
	cd tests/k8s && go build -trimpath -buildvcs=false -ldflags='-s -w' -o ../../target/k8s/ \
	  $(addprefix k8s.io/kubernetes/cmd/,$(K8S_CMDS)) ./standin ./etcd ./fakecri
	touch $@

.PHONY: bench
bench: build ## Time kpki init against the openssl + age workflow (3/100/1,000 nodes); writes target/bench/results.md
	bash tests/bench/bench.sh

FUZZ_TARGETS := config pem kubeconfig

.PHONY: fuzz
fuzz: ## Fuzz the config parser, the PEM/age loaders and kubeconfig rendering for FUZZ_SECONDS each (cargo-fuzz, nightly)
	for target in $(FUZZ_TARGETS); do \
	  (cd tests/fuzz && cargo +nightly fuzz run --fuzz-dir . $$target corpus/$$target -- -max_total_time=$(or $(FUZZ_SECONDS),60)) || exit 1; \
	done

.PHONY: lint
lint: ## Check formatting and run clippy with warnings as errors
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

.PHONY: update-flake
update-flake: ## Update nix flake inputs
	nix flake update

.PHONY: help
help: ## Display this help
	@grep -h -E '^[a-zA-Z0-9_-]+:.*?## .*$$' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "\033[36m%-30s\033[0m %s\n", $$1, $$2}'
