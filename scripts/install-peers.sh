#!/usr/bin/env bash
# Installs the real MCP peers the tests and scripts use into $AIP_PEERS (default: <repo>/.peers):
#   npm:  @modelcontextprotocol/server-filesystem, server-everything, server-memory (node >= 18)
#   PyPI: mcp (official Python SDK, client), mcp-server-time, mcp-server-fetch, mcp-server-git
# Idempotent: a stamp file records what was installed. Prints the peers directory on success.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
peers=${AIP_PEERS:-$here/.peers}
stamp_want="node:2026.8.31 py:mcp==2.3.0,time==2026.10.19,fetch==2026.10.24,git==2026.10.19"
mkdir -p "$peers"
if [ -f "$peers/.stamp" ] && [ "$(cat "$peers/.stamp")" = "$stamp_want" ]; then
  echo "$peers"; exit 0
fi
log() { echo "install-peers: $*" >&2; }
log "npm servers into $peers/node"
mkdir -p "$peers/node"
( cd "$peers/node" && [ -f package.json ] || npm init -y >/dev/null )
( cd "$peers/node" && npm install --no-audit --no-fund --loglevel=error \
    @modelcontextprotocol/server-filesystem@2026.8.31 \
    @modelcontextprotocol/server-everything@2026.8.31 \
    @modelcontextprotocol/server-memory@2026.8.31 >&2 )
log "python SDK and servers into $peers/py"
[ -x "$peers/py/bin/python" ] || python3 -m venv "$peers/py"
"$peers/py/bin/pip" install --disable-pip-version-check -q \
    mcp==2.3.0 mcp-server-time==2026.10.19 mcp-server-fetch==2026.10.24 mcp-server-git==2026.10.19 >&2
echo "$stamp_want" > "$peers/.stamp"
echo "$peers"
