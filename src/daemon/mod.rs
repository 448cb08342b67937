//! `aipd`: the systemd service that spawns one sandboxed, policed MCP server per client session.
