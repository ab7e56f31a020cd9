#!/usr/bin/env bash
# The main job on the embedded default: start the service (local Ray, SQLite, a local folder),
# analyse a real video through it, print the result, and keep serving the web UI until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

MEDIA="${1:-../shared/data/videos/liveportrait_d0.mp4}"
PORT="${DFD_PORT:-8000}"
SERVER="http://127.0.0.1:${PORT}"
DFD=.venv/bin/dfd

# Real scores out of the box: the four MesoNet detectors (Apache-2.0), from the shared weights
# folder when it is there, else from their pinned upstream URLs (sha256-checked), beside
# sbi_lite0, the detector this project trained (its weights ship in the package). The `auto`
# ensemble runs them (`open`) until trained weights of the paper's five are imported.
if [ -z "${DFD_WEIGHTS_MIRROR:-}" ] && [ -d ../shared/weights/mesonet ]; then
  export DFD_WEIGHTS_MIRROR="$(cd ../shared/weights && pwd)"
fi
if ! "$DFD" models list --json | .venv/bin/python -c '
import json, sys
d = json.load(sys.stdin)
mesonet = set(d["ensembles"].get("mesonet", []))
present = {m["name"] for m in d["members"] if m["weights"] == "present"}
sys.exit(0 if mesonet and mesonet <= present else 1)'; then
  "$DFD" models fetch mesonet
fi
if ! "$DFD" models list --json | .venv/bin/python -c '
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if any(m["name"] == "sbi_lite0" and m["weights"] == "present" for m in d["members"]) else 1)'; then
  "$DFD" models fetch sbi_lite0
fi

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
