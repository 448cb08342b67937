#!/usr/bin/env python3
"""Test "remote host" for the egress suite: plain HTTP on :80, HTTPS on :443 (certificate given on
the command line), and a line echo service on :7000, all on the namespace's addresses. Prints
"ready" once every socket is bound. Started by tests/suite/egress.rs inside a network namespace
the test created; never reachable from anywhere else."""
import http.server
import socket
import socketserver
import ssl
import sys
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"hello from remote {self.headers.get('Host')} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(b"echo " + line)


def main():
    cert, key = sys.argv[1], sys.argv[2]
    http.server.ThreadingHTTPServer.address_family = socket.AF_INET
    plain = http.server.ThreadingHTTPServer(("0.0.0.0", 80), Handler)
    tls = http.server.ThreadingHTTPServer(("0.0.0.0", 443), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    echo = socketserver.ThreadingTCPServer(("0.0.0.0", 7000), Echo)
    for s in (plain, tls, echo):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()  # exit when the test closes our stdin


if __name__ == "__main__":
    main()
