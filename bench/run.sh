#!/usr/bin/env bash
# Benchmarks Concord and etcd side by side on this machine, over loopback only (127.0.0.1).
#
# For each target in turn (Concord, then Debian's etcd 3.4): start a cluster of MEMBERS members
# (one by default), each on a fresh `mktemp -d` data dir, wait until `etcdctl endpoint health`
# passes on every member, run every workload against it with concord-bench (its connections spread
# over all members), stop the members by their PIDs. Then print the Markdown comparison table
# (`concord-bench compare`) and save it next to the JSON results.
#
# Usage: bench/run.sh            (from anywhere; builds first)
# Settings (environment):
#   DURATION=10        measured seconds per workload
#   WARMUP=1           unmeasured seconds before each workload
#   WORKLOADS="put:256:16 put:1:1 range:256:16 range-serializable:256:16 txn:256:16"
#                      workload:clients:conns[:flag=value,...], workload one of put, range
#                      (linearizable), range-serializable, txn, watch-fanout, lease-keepalive,
#                      lease-expiry-storm. The optional flag=value list is passed to that run only,
#                      as --flag value. The watch and lease workloads also get --server-pid (for
#                      the server's memory and CPU); lease-expiry-storm gets no --duration unless
#                      its list has one (the tool's default, TTL + 15 s, covers the expiry). E.g.
#                      WORKLOADS="watch-fanout:100:4 lease-keepalive:1000:16 lease-expiry-storm:64:8"
#                      WORKLOADS="watch-fanout:16:4:watchers=1000,streams=10,rate=200
#                                 lease-keepalive:100:4:leases=10000 lease-expiry-storm:64:8:leases=2000"
#   TARGETS="concord etcd"  which servers to run, in this order
#   MEMBERS=1          members per cluster; member i uses the ports below + 100*i
#   BENCH_ARGS=""      extra concord-bench flags for every run (e.g. "--val-size 1024")
#   OUT_DIR=target/bench-results/<UTC timestamp>   where results go
#   SKIP_BUILD=1       do not run cargo build
#   CONCORD_PORT=22379 CONCORD_PEER_PORT=22380 ETCD_PORT=23790 ETCD_PEER_PORT=23800
set -euo pipefail

readonly HOST=127.0.0.1 # loopback only, by design: never point this at another address
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly ROOT
readonly DURATION="${DURATION:-10}"
readonly WARMUP="${WARMUP:-1}"
readonly WORKLOADS="${WORKLOADS:-put:256:16 put:1:1 range:256:16 range-serializable:256:16 txn:256:16}"
readonly TARGETS="${TARGETS:-concord etcd}"
readonly MEMBERS="${MEMBERS:-1}"
readonly BENCH_ARGS="${BENCH_ARGS:-}"
readonly CONCORD_PORT="${CONCORD_PORT:-22379}" CONCORD_PEER_PORT="${CONCORD_PEER_PORT:-22380}"
readonly ETCD_PORT="${ETCD_PORT:-23790}" ETCD_PEER_PORT="${ETCD_PEER_PORT:-23800}"
OUT_DIR="${OUT_DIR:-$ROOT/target/bench-results/$(date -u +%Y%m%dT%H%M%SZ)}"
readonly OUT_DIR
readonly BENCH="$ROOT/target/release/concord-bench"
readonly CONCORD="$ROOT/target/release/concord"

SERVER_PID=""  # the first member's (watch and lease workloads report its memory and CPU)
SERVER_PIDS=()
SERVER_NAME=""
SERVER_LOGS=()
ENDPOINTS=""  # every member's client address, comma-separated
TEMP_DIRS=()
RESULTS=()  # JSON files written, in run order (the table's row order)
FAILED=()   # runs that did not complete

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'run.sh: %s\n' "$*" >&2; exit 1; }

# Stops the running members (if any) by their PIDs: SIGTERM, then SIGKILL after 10 s; keeps
# their logs.
stop_server() {
  local pid i
  for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${SERVER_PIDS[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.2
    done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  for i in "${!SERVER_LOGS[@]}"; do
    if [[ -d "$OUT_DIR" && -f "${SERVER_LOGS[$i]}" ]]; then
      cp -- "${SERVER_LOGS[$i]}" "$OUT_DIR/$SERVER_NAME-server-$i.log"
    fi
  done
  SERVER_PID="" SERVER_PIDS=() SERVER_LOGS=()
}

cleanup() {
  stop_server
  local dir
  for dir in "${TEMP_DIRS[@]}"; do rm -rf -- "$dir"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ensure_etcd() {
  if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then return; fi
  [[ "$(id -u)" == 0 ]] || die "etcd/etcdctl not found; install them: apt-get install -y etcd-server etcd-client"
  log "installing etcd-server and etcd-client with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
  if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    die "etcd still missing after apt-get"
  fi
}

# Waits until the server (PID $3) on port $1 answers `etcdctl endpoint health` (50 tries, 0.2 s
# apart).
wait_healthy() {
  local port="$1" log_file="$2" pid="$3"
  for _ in $(seq 50); do
    kill -0 "$pid" 2>/dev/null || { tail -n 20 "$log_file" >&2; die "server exited during startup (log: $log_file)"; }
    if ETCDCTL_API=3 etcdctl --endpoints "$HOST:$port" --command-timeout=1s endpoint health >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  tail -n 20 "$log_file" >&2
  die "server on $HOST:$port not healthy after 10 s (log: $log_file)"
}

# True if nothing accepts TCP connections on $HOST:$1.
port_free() {
  ! (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# Starts target $1's MEMBERS members, each on a fresh data dir; sets SERVER_PIDS and ENDPOINTS.
start_server() {
  local target="$1" bin base_port base_peer i dir port peer cluster="" endpoints=()
  case "$target" in
    concord) bin="$CONCORD" base_port="$CONCORD_PORT" base_peer="$CONCORD_PEER_PORT" ;;
    etcd) bin="$(command -v etcd)" base_port="$ETCD_PORT" base_peer="$ETCD_PEER_PORT" ;;
    *) die "unknown target $target (expected concord or etcd)" ;;
  esac
  for ((i = 0; i < MEMBERS; i++)); do
    port=$((base_port + 100 * i)) peer=$((base_peer + 100 * i))
    # Another server on these ports would answer the health check and the benchmark instead.
    port_free "$port" || die "$HOST:$port is in use: stop that server or set ${target^^}_PORT"
    port_free "$peer" || die "$HOST:$peer is in use: stop that server or set ${target^^}_PEER_PORT"
    cluster+="${cluster:+,}bench$i=http://$HOST:$peer"
  done
  SERVER_NAME="$target"
  for ((i = 0; i < MEMBERS; i++)); do
    port=$((base_port + 100 * i)) peer=$((base_peer + 100 * i))
    dir="$(mktemp -d -t "concord-bench-$target.XXXXXX")"
    TEMP_DIRS+=("$dir")
    log "starting $target member $i on $HOST:$port (data dir $dir/data)"
    "$bin" --name "bench$i" --data-dir "$dir/data" \
      --listen-client-urls "http://$HOST:$port" --advertise-client-urls "http://$HOST:$port" \
      --listen-peer-urls "http://$HOST:$peer" --initial-advertise-peer-urls "http://$HOST:$peer" \
      --initial-cluster "$cluster" --initial-cluster-state new >"$dir/server.log" 2>&1 &
    SERVER_PIDS+=($!)
    SERVER_LOGS+=("$dir/server.log")
    endpoints+=("$HOST:$port")
  done
  SERVER_PID="${SERVER_PIDS[0]}"
  for ((i = 0; i < MEMBERS; i++)); do
    wait_healthy "$((base_port + 100 * i))" "${SERVER_LOGS[$i]}" "${SERVER_PIDS[$i]}"
  done
  ENDPOINTS="$(IFS=,; echo "${endpoints[*]}")"
}

# Runs every workload against the target's members ($ENDPOINTS), labelled $1.
run_workloads() {
  local target="$1" spec workload clients conns flags args json pair pairs name value duration
  for spec in $WORKLOADS; do
    IFS=: read -r workload clients conns flags <<<"$spec"
    [[ -n "$clients" && -n "$conns" ]] || die "bad WORKLOADS entry $spec (want workload:clients:conns[:flag=value,...])"
    case "$workload" in
      put | txn | watch-fanout | lease-keepalive | lease-expiry-storm) args=("$workload") ;;
      range | range-linearizable) args=(range) ;;
      range-serializable) args=(range --serializable) ;;
      *) die "unknown workload $workload in $spec" ;;
    esac
    case "$workload" in
      watch-fanout | lease-keepalive | lease-expiry-storm) args+=(--server-pid "$SERVER_PID") ;;
    esac
    # The run's own flags; --duration only when neither they nor the workload's default set it.
    duration=(--duration "$DURATION")
    [[ "$workload" != lease-expiry-storm ]] || duration=()
    if [[ -n "$flags" ]]; then
      IFS=, read -r -a pairs <<<"$flags"
      for pair in "${pairs[@]}"; do
        [[ "$pair" == *=* ]] || die "bad flag $pair in $spec (want flag=value)"
        name="${pair%%=*}" value="${pair#*=}"
        args+=("--$name" "$value")
        [[ "$name" != duration ]] || duration=()
      done
    fi
    json="$OUT_DIR/$target-$workload-${clients}c-${conns}x${flags:+-${flags//[^a-zA-Z0-9=.-]/_}}.json"
    log "$target: $workload, $clients clients / $conns conns${flags:+, $flags}${duration[*]:+, ${DURATION}s}"
    # A failed run (e.g. a server that lacks a feature) is reported, and the others still run.
    # shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
    if "$BENCH" "${args[@]}" --endpoints "$ENDPOINTS" --label "$target" \
      --clients "$clients" --conns "$conns" "${duration[@]}" --warmup "$WARMUP" \
      --json "$json" $BENCH_ARGS | tee -a "$OUT_DIR/$target.txt"; then
      RESULTS+=("$json")
    else
      FAILED+=("$target $spec")
      log "FAILED: $target $spec"
    fi
  done
}

main() {
  cd "$ROOT"
  if [[ "${SKIP_BUILD:-}" != 1 ]]; then
    log "building (release)"
    cargo build --release -p concord-store -p concord-bench
  fi
  [[ -x "$BENCH" ]] || die "$BENCH is missing: build it with cargo build --release -p concord-bench"
  ensure_etcd
  mkdir -p "$OUT_DIR"
  local target
  for target in $TARGETS; do
    [[ "$target" != concord || -x "$CONCORD" ]] || die "$CONCORD is missing: build concord-store"
    start_server "$target"
    run_workloads "$target"
    stop_server
  done
  log "results in $OUT_DIR"
  ((${#RESULTS[@]} > 0)) || die "no run completed"
  echo
  "$BENCH" compare --output "$OUT_DIR/comparison.md" "${RESULTS[@]}"
  if ((${#FAILED[@]} > 0)); then
    printf 'run.sh: failed runs: %s\n' "${FAILED[@]}" >&2
    exit 1
  fi
}

main "$@"
