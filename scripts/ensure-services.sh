#!/usr/bin/env bash
# Start what the tests talk to, when it is not already running: Redis on 127.0.0.1:6379.
set -euo pipefail

if ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
  if ! command -v redis-server >/dev/null; then
    apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
  fi
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && break
    sleep 0.1
  done
fi
