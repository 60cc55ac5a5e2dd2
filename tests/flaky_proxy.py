"""A fault-injecting HTTP proxy in front of the GCS emulator (127.0.0.1).

Every request is forwarded to the emulator unchanged, except that a seeded
share of them is answered with `503 Service Unavailable`, reset (the
connection closed without an answer) or delayed by seconds first; in
`down` mode every request gets a 503 (a persistent outage). The counts of
what was injected are kept for the test to report. Both clients of the
project go through it: gcsfs (STORAGE_EMULATOR_HOST) and tensorstore's GCS
driver (TENSORSTORE_GCS_HTTP_URL); the emulator's own URLs (resumable
uploads) name the proxy too (`-external-url`).
"""

import collections
import http.client
import http.server
import random
import socket
import threading
import time
import urllib.parse

_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection"}


class FlakyProxy:
  """Forwards to `target` (http://host:port) with seeded faults."""

  def __init__(
    self,
    target: str,
    seed: int = 0,
    p_503: float = 0.05,
    p_reset: float = 0.02,
    p_delay: float = 0.03,
    delay_s: tuple[float, float] = (1.0, 2.0),
  ):
    self.target = urllib.parse.urlsplit(target)
    self.p_503, self.p_reset, self.p_delay = p_503, p_reset, p_delay
    self.delay_s = delay_s
    self.down = False
    self.counts: collections.Counter = collections.Counter()
    self._rng, self._lock = random.Random(seed), threading.Lock()
    proxy = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args):
        del args

      def _serve(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fault = proxy._decide()
        if fault == "reset":
          self.close_connection = True
          self.connection.shutdown(socket.SHUT_RDWR)
          return
        if fault == "503":
          payload = b'{"error": {"code": 503, "message": "injected"}}'
          self.send_response(503, "Service Unavailable")
          self.send_header("Content-Type", "application/json")
          self.send_header("Content-Length", str(len(payload)))
          self.end_headers()
          self.wfile.write(payload)
          return
        if fault == "delay":
          time.sleep(proxy._uniform(*proxy.delay_s))
        status, reason, headers, data = proxy._forward(
          self.command, self.path, self.headers, body
        )
        self.send_response(status, reason)
        for k, v in headers:
          if k.lower() not in _HOP and k.lower() != "content-length":
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
          self.wfile.write(data)

      do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self._server.daemon_threads = True
    self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
    self._thread = threading.Thread(
      target=self._server.serve_forever, daemon=True
    )
    self._thread.start()

  def _uniform(self, lo: float, hi: float) -> float:
    with self._lock:
      return self._rng.uniform(lo, hi)

  def _decide(self) -> str:
    with self._lock:
      self.counts["requests"] += 1
      if self.down:
        self.counts["503"] += 1
        return "503"
      r = self._rng.random()
      if r < self.p_503:
        fault = "503"
      elif r < self.p_503 + self.p_reset:
        fault = "reset"
      elif r < self.p_503 + self.p_reset + self.p_delay:
        fault = "delay"
      else:
        return "none"
      self.counts[fault] += 1
      return fault

  def _forward(self, method, path, headers, body):
    conn = http.client.HTTPConnection(
      self.target.hostname, self.target.port, timeout=60
    )
    try:
      out = {k: v for k, v in headers.items() if k.lower() not in _HOP}
      conn.request(method, path, body=body, headers=out)
      resp = conn.getresponse()
      return resp.status, resp.reason, resp.getheaders(), resp.read()
    finally:
      conn.close()

  def close(self) -> None:
    self._server.shutdown()
    self._server.server_close()
