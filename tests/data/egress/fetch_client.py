#!/usr/bin/env python3
"""Drives a stdio MCP server with the official Python SDK client for the egress suite.

argv[1] is a JSON object: {"command": [argv...], "env": {...}, "calls": [{"tool": ..., "arguments":
{...}}, ...]}. Prints one JSON line per call: {"isError": bool, "text": "..."}."""
import asyncio
import json
import sys

from mcp import Client
from mcp.client.stdio import StdioServerParameters


async def main():
    spec = json.loads(sys.argv[1])
    cmd = spec["command"]
    params = StdioServerParameters(command=cmd[0], args=cmd[1:], env=spec["env"])
    async with Client(params) as client:
        for call in spec["calls"]:
            result = await client.call_tool(call["tool"], call["arguments"])
            text = "".join(c.text for c in result.content if getattr(c, "type", "") == "text")
            print(json.dumps({"isError": bool(result.is_error), "text": text}), flush=True)


asyncio.run(main())
