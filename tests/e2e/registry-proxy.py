#!/usr/bin/env python3
"""A registry's trouble on demand, in front of a real registry (tests/e2e/upstream-trouble.sh).

    registry-proxy.py LISTEN_PORT UPSTREAM_PORT

Forwards every request to the registry on 127.0.0.1:UPSTREAM_PORT and answers it unchanged, except:
  POST /_proxy/fault?path=P&status=N[&retry_after=S]  requests for path P get status N (an OCI error body,
                                                     Retry-After: S when given) instead
  POST /_proxy/ratelimit?limit=L&remaining=R          every answer carries Docker Hub's budget headers
                                                     (`ratelimit-limit: L;w=21600`, `ratelimit-remaining`)
  POST /_proxy/clear                                  no faults, no budget headers
  GET  /_proxy/counts                                 requests forwarded or faulted, by "METHOD kind"
                                                     (kind: manifest, blob, other), as JSON
Only loopback is dialled.
"""
import http.client
import http.server
import json
import sys
import threading
import urllib.parse

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}
CODES = {401: "UNAUTHORIZED", 403: "DENIED", 404: "MANIFEST_UNKNOWN", 410: "MANIFEST_UNKNOWN",
         429: "TOOMANYREQUESTS"}

lock = threading.Lock()
faults = {}
ratelimit = None
counts = {}


def kind(path):
    if "/manifests/" in path:
        return "manifest"
    if "/blobs/" in path:
        return "blob"
    return "other"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body=b"", headers=(), length=None):
        """`length`: the Content-Length of a HEAD answer, which has no body to measure."""
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        with lock:
            rl = ratelimit
        if rl:
            self.send_header("ratelimit-limit", f"{rl[0]};w=21600")
            self.send_header("ratelimit-remaining", f"{rl[1]};w=21600")
        self.send_header("Content-Length", str(len(body)) if length is None else length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def control(self):
        global ratelimit
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        with lock:
            if url.path == "/_proxy/fault":
                faults[q["path"]] = (int(q["status"]), q.get("retry_after"))
            elif url.path == "/_proxy/ratelimit":
                ratelimit = (int(q["limit"]), int(q["remaining"]))
            elif url.path == "/_proxy/clear":
                faults.clear()
                ratelimit = None
            elif url.path == "/_proxy/counts":
                body = json.dumps(counts).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            else:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        self.send_response(204)
        self.end_headers()

    def forward(self):
        if self.path.startswith("/_proxy/"):
            return self.control()
        path = urllib.parse.urlsplit(self.path).path
        with lock:
            key = f"{self.command} {kind(path)}"
            counts[key] = counts.get(key, 0) + 1
            fault = faults.get(path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if fault:
            status, retry = fault
            error = {"errors": [{"code": CODES.get(status, "UNAVAILABLE"), "message": "injected by the test proxy"}]}
            headers = [("Content-Type", "application/json")]
            if retry:
                headers.append(("Retry-After", retry))
            return self.reply(status, json.dumps(error).encode(), headers)
        conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP and k.lower() != "content-length"]
        length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else None
        self.reply(resp.status, data, out, length)
        conn.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = forward


if __name__ == "__main__":
    LISTEN, UPSTREAM = int(sys.argv[1]), int(sys.argv[2])
    http.server.ThreadingHTTPServer(("127.0.0.1", LISTEN), Handler).serve_forever()
