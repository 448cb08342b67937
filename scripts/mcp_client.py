#!/usr/bin/env python3
"""A real MCP client (the official Python SDK) for end-to-end checks of aip.

Usage: mcp_client.py [--mode auto|legacy|2026-07-28] STEPS_JSON -- CMD [ARGS...]

STEPS_JSON is a list of steps, run in order over one session:
  {"list_tools": {"include": [...], "exclude": [...]}}
  {"call": TOOL, "args": {...}, "expect": "ok" | "tool_error" | <JSON-RPC error code>,
   "contains": "text the result must contain", "not_contains": "text it must not"}
Prints one line per step and exits non-zero on the first failed expectation.
"""
import asyncio
import json
import sys

from mcp import Client
from mcp.client.stdio import StdioServerParameters


def fail(msg):
    print(f"FAIL {msg}", flush=True)
    sys.exit(1)


def error_code(exc):
    for attr in ("error", "err"):
        e = getattr(exc, attr, None)
        if e is not None and getattr(e, "code", None) is not None:
            return e.code
    return getattr(exc, "code", None)


async def main():
    argv = sys.argv[1:]
    mode = "auto"
    if argv and argv[0] == "--mode":
        mode, argv = argv[1], argv[2:]
    steps = json.loads(argv[0])
    cmd = argv[argv.index("--") + 1:]
    async with Client(StdioServerParameters(command=cmd[0], args=cmd[1:]), mode=mode) as client:
        print(f"connected protocol_version={client.protocol_version}", flush=True)
        for step in steps:
            if "list_tools" in step:
                names = [t.name for t in (await client.list_tools()).tools]
                want = step["list_tools"]
                missing = [n for n in want.get("include", []) if n not in names]
                present = [n for n in want.get("exclude", []) if n in names]
                if missing or present:
                    fail(f"list_tools: missing {missing}, unexpectedly present {present}; got {names}")
                print(f"ok   list_tools {len(names)} tools", flush=True)
                continue
            tool, args, expect = step["call"], step.get("args", {}), step.get("expect", "ok")
            try:
                res = await client.call_tool(tool, args)
            except Exception as exc:  # the SDK raises on JSON-RPC errors
                code = error_code(exc)
                if expect == code:
                    print(f"ok   {tool} -> JSON-RPC error {code}", flush=True)
                    continue
                fail(f"{tool}: expected {expect}, got exception {type(exc).__name__} code={code}: {exc}")
            text = res.model_dump_json(exclude_none=True, by_alias=True)
            got = "tool_error" if res.is_error else "ok"
            if got != expect:
                fail(f"{tool}: expected {expect}, got {got}: {text[:500]}")
            if step.get("contains") and step["contains"] not in text:
                fail(f"{tool}: result lacks {step['contains']!r}: {text[:500]}")
            if step.get("not_contains") and step["not_contains"] in text:
                fail(f"{tool}: result contains {step['not_contains']!r}: {text[:500]}")
            print(f"ok   {tool} -> {got}", flush=True)


asyncio.run(main())
