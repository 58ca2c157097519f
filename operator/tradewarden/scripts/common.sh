# Shared by controlplane.sh and image.sh (sourced; LOG_NAME names the caller in its messages).

log() {   # JSON lines when TRADEWARDEN_LOG_FORMAT=json (./tw --log-format json sets it), else plain text
  if [ "${TRADEWARDEN_LOG_FORMAT:-text}" = json ]; then
    local msg=${*//\\/\\\\}; msg=${msg//\"/\\\"}
    printf '{"time": "%s", "level": "info", "logger": "%s", "message": "%s"}\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)" "$LOG_NAME" "$msg" >&2
  else
    printf '[%s] %s\n' "$LOG_NAME" "$*" >&2
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

# wait_up SECONDS CHECK PIDNAME LOGFILE WHAT: poll CHECK every 0.1 s until it succeeds; fail early, with the
# log's tail, when the process recorded in $RUN/PIDNAME.pid exits.
wait_up() {
  local seconds=$1 check=$2 pidname=$3 logfile=$4 what=$5 _
  for _ in $(seq 1 $((seconds * 10))); do
    "$check" && return 0
    alive "$pidname" || { tail -20 "$logfile" >&2; log "$what exited"; exit 1; }
    sleep 0.1
  done
  "$check" || { tail -20 "$logfile" >&2; log "$what not ready after $seconds s"; exit 1; }
}
