#!/usr/bin/env bash
# run_local.sh — GenARM Serve on one machine, loopback only:
#   redis-server, genarm-admin setup (tenant, API key, two ARMs, two profiles),
#   one base_worker, two reward_workers (one ARM each), the coordinator;
#   then the same prompt answered under both profiles with curl; then stops
#   everything (or keeps it running with --keep).
#
# usage: deploy/run_local.sh [--build DIR] [--base DIR] [--arm1 DIR] [--arm2 DIR]
#                            [--redis-port N] [--http-port N] [--prompt TEXT]
#                            [--max-tokens N] [--keep] [--workdir DIR] [--names A,B]
# --names: the two ARMs' (and profiles') names (default concise,verbose).
# Without --base/--arm1/--arm2 it makes tiny random models with genarm-make-model
# (the real Llama-2 tokenizer from BUILD/fixtures/tokenizers/llama2).
# Ports default to random free ones. Needs redis-server, curl and python3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$ROOT/build
BASE= ; ARM1= ; ARM2= ; RPORT= ; HPORT= ; KEEP=0 ; WORK=
N1=concise ; N2=verbose
PROMPT="Once upon a time"
MAXTOK=24
while [ $# -gt 0 ]; do
    case "$1" in
        --build) BUILD=$2; shift 2 ;;
        --base) BASE=$2; shift 2 ;;
        --arm1) ARM1=$2; shift 2 ;;
        --arm2) ARM2=$2; shift 2 ;;
        --redis-port) RPORT=$2; shift 2 ;;
        --http-port) HPORT=$2; shift 2 ;;
        --prompt) PROMPT=$2; shift 2 ;;
        --max-tokens) MAXTOK=$2; shift 2 ;;
        --workdir) WORK=$2; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --names) N1=${2%%,*}; N2=${2#*,}; shift 2 ;;
        -h|--help) sed -n 2,14p "$0"; exit 0 ;;
        *) echo "run_local.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
BUILD=$(cd "$BUILD" && pwd)
for b in coordinator/coordinator base_worker/base_worker reward_worker/reward_worker tools/genarm-admin tools/genarm-make-model; do
    [ -x "$BUILD/$b" ] || { echo "run_local.sh: $BUILD/$b missing (build first: cmake -S . -B build && make -C build -j2)" >&2; exit 1; }
done
command -v redis-server >/dev/null || { echo "run_local.sh: redis-server not found (apt-get install redis-server)" >&2; exit 1; }
command -v curl >/dev/null || { echo "run_local.sh: curl not found (apt-get install curl)" >&2; exit 1; }

AUTO_WORK=0
[ -n "$WORK" ] || { WORK=$(mktemp -d /tmp/genarm-local.XXXXXX); AUTO_WORK=1; }
mkdir -p "$WORK"
PIDS=()
cleanup() {
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill -TERM "${PIDS[$i]}" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    [ "$AUTO_WORK" = 1 ] && rm -rf "$WORK/models" # made here; the logs stay
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    local p
    while :; do
        p=$(( (RANDOM << 15 | RANDOM) % 30000 + 20000 ))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}
wait_file() { # file seconds
    local i=0
    while [ ! -s "$1" ]; do
        sleep 0.1; i=$((i + 1))
        [ $i -lt $(($2 * 10)) ] || { echo "run_local.sh: timed out waiting for $1 (logs in $WORK)" >&2; tail -n 20 "$WORK"/*.log >&2; exit 1; }
    done
}

RPORT_GIVEN=$RPORT
[ -n "$RPORT" ] || RPORT=$(free_port)
[ -n "$HPORT" ] || HPORT=$(free_port)
REDIS=127.0.0.1:$RPORT
ADMIN=("$BUILD/tools/genarm-admin" --redis "$REDIS")

# ---- models -------------------------------------------------------------------------
TOK=$BUILD/fixtures/tokenizers/llama2
mk() { "$BUILD/tools/genarm-make-model" --arch llama --out "$1" --tokenizer-from "$TOK" --dim 64 --layers 2 \
          --heads 4 --kv-heads 2 --ffn 128 --seed "$2" --std "$3" > /dev/null; }
if [ -z "$BASE" ]; then BASE=$WORK/models/base; [ -d "$BASE" ] || mk "$BASE" 1 0.02; fi
if [ -z "$ARM1" ]; then ARM1=$WORK/models/arm-concise; [ -d "$ARM1" ] || mk "$ARM1" 2 0.15; fi
if [ -z "$ARM2" ]; then ARM2=$WORK/models/arm-verbose; [ -d "$ARM2" ] || mk "$ARM2" 3 0.15; fi

# ---- redis + control plane ----------------------------------------------------------------
# A random port may be taken between the probe and the bind (other tests pick ports too): when
# redis-server exits at start, try another one (an explicit --redis-port is tried only once).
for attempt in 1 2 3; do
    redis-server --bind 127.0.0.1 --port "$RPORT" --save '' --appendonly no --protected-mode yes \
        > "$WORK/redis.log" 2>&1 &
    RPID=$!
    up=0
    for _ in $(seq 100); do
        "${ADMIN[@]}" tenant list > /dev/null 2>&1 && { up=1; break; }
        kill -0 "$RPID" 2>/dev/null || break
        sleep 0.1
    done
    if [ $up = 1 ]; then PIDS+=("$RPID"); break; fi
    kill "$RPID" 2>/dev/null || true
    if [ -n "$RPORT_GIVEN" ] || [ $attempt = 3 ]; then
        echo "run_local.sh: redis-server did not start on port $RPORT:" >&2
        tail -n 5 "$WORK/redis.log" >&2
        exit 1
    fi
    RPORT=$(free_port)
    REDIS=127.0.0.1:$RPORT
    ADMIN=("$BUILD/tools/genarm-admin" --redis "$REDIS")
done
"${ADMIN[@]}" arm register "$N1" --version 1 --path "$ARM1" > /dev/null
"${ADMIN[@]}" arm register "$N2" --version 1 --path "$ARM2" > /dev/null
"${ADMIN[@]}" tenant add acme --name "ACME Corp" > /dev/null
KEY=$("${ADMIN[@]}" key create acme)
"${ADMIN[@]}" profile set acme "$N1" --arm "$N1:1.0" --beta 0.5 > /dev/null
"${ADMIN[@]}" profile set acme "$N2" --arm "$N2:1.0" --beta 0.5 > /dev/null

# ---- workers + coordinator --------------------------------------------------------------------
"$BUILD/base_worker/base_worker" --model "$BASE" --bind 'tcp://127.0.0.1:*' --threads 1 \
    --ready-file "$WORK/base.ep" > "$WORK/base_worker.log" 2>&1 &
PIDS+=($!)
"$BUILD/reward_worker/reward_worker" --bind 'tcp://127.0.0.1:*' --redis "$REDIS" --worker-id rw1 --arm "$N1" \
    --threads 1 --ready-file "$WORK/rw1.ep" > "$WORK/reward_worker1.log" 2>&1 &
PIDS+=($!)
"$BUILD/reward_worker/reward_worker" --bind 'tcp://127.0.0.1:*' --redis "$REDIS" --worker-id rw2 --arm "$N2" \
    --threads 1 --ready-file "$WORK/rw2.ep" > "$WORK/reward_worker2.log" 2>&1 &
PIDS+=($!)
wait_file "$WORK/base.ep" 60
wait_file "$WORK/rw1.ep" 60
wait_file "$WORK/rw2.ep" 60
"$BUILD/coordinator/coordinator" --listen "127.0.0.1:$HPORT" --redis "$REDIS" --base "$(cat "$WORK/base.ep")" \
    --base-model "$BASE" --model-id genarm-tiny --ready-file "$WORK/coord.addr" > "$WORK/coordinator.log" 2>&1 &
PIDS+=($!)
wait_file "$WORK/coord.addr" 60
URL=http://127.0.0.1:$HPORT

echo "GenARM Serve on $URL (redis $REDIS, logs in $WORK)"
echo "API key: $KEY"
ANSWERS=()
for prof in "$N1" "$N2"; do
    echo
    echo "== profile '$prof': $PROMPT"
    BODY=$(python3 -c 'import json,sys; print(json.dumps({"model": "genarm-tiny", "prompt": sys.argv[1],
        "profile": sys.argv[2], "max_tokens": int(sys.argv[3]), "temperature": 0, "stream": True}))' \
        "$PROMPT" "$prof" "$MAXTOK")
    ANSWER=$(curl -sS -N "$URL/v1/completions" -H "Authorization: Bearer $KEY" \
        -H 'Content-Type: application/json' -d "$BODY" | sed -n 's/^data: //p' | grep -v '^\[DONE\]' |
        python3 -c 'import sys,json
out = []
for l in sys.stdin:
    l = l.strip()
    if l:
        j = json.loads(l)
        if "error" in j: sys.exit("error: " + j["error"]["message"])
        out.append(j["choices"][0].get("text", ""))
print("".join(out))') || { echo "run_local.sh: the request under profile $prof failed" >&2; exit 1; }
    echo "$ANSWER"
    ANSWERS+=("$ANSWER")
done
if [ -z "${ANSWERS[0]}" ] || [ -z "${ANSWERS[1]}" ]; then
    echo "run_local.sh: empty answer" >&2
    exit 1
fi
if [ "$KEEP" = 1 ]; then
    echo
    echo "running; try:"
    echo "  curl -N $URL/v1/completions -H 'Authorization: Bearer $KEY' -H 'Content-Type: application/json' \\"
    echo "       -d '{\"model\":\"genarm-tiny\",\"prompt\":\"Hello\",\"profile\":\"'"$N1"'\",\"stream\":true}'"
    echo "Ctrl-C stops everything."
    while sleep 3600; do :; done
fi
