#!/usr/bin/env bash
# The main job on the embedded default: start the service (local Ray, SQLite, a local folder),
# analyse a real video through it, print the result, and keep serving the web UI until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

MEDIA="${1:-../shared/data/videos/liveportrait_d0.mp4}"
PORT="${DFD_PORT:-8000}"
SERVER="http://127.0.0.1:${PORT}"
DFD=.venv/bin/dfd

"$DFD" serve --port "$PORT" &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT INT TERM

for _ in $(seq 600); do
  if curl -fsS "$SERVER/readyz" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server" 2>/dev/null; then echo "demo: the service did not start" >&2; exit 1; fi
  sleep 1
done

"$DFD" submit "$MEDIA" --server "$SERVER" --wait
echo
echo "The web UI is at $SERVER/ (same result, with pictures). Ctrl-C stops the service."
wait "$server"
