"""A hub-shaped model server on 127.0.0.1 for tests (no network).

Serves FOLDER/<org>/<name>/<files> the way huggingface_hub's
`snapshot_download` reads a model repository: the revision and tree APIs
(one fixed commit) and `resolve` URLs with the headers it checks (ETag,
X-Repo-Commit, Content-Length). Run: python hub_server.py FOLDER; the first
line printed is the port.
"""

import hashlib
import http.server
import json
import os
import sys

COMMIT = "0" * 40


def _files(root: str, repo: str) -> list[dict]:
  base = os.path.join(root, repo)
  out = []
  for folder, _, names in os.walk(base):
    for name in names:
      full = os.path.join(folder, name)
      out.append(
        {"path": os.path.relpath(full, base), "size": os.path.getsize(full)}
      )
  return out


def handler(root: str):
  class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
      sys.stderr.write(f"{self.command} {self.path}\n")

    def _send(self, code: int, body: bytes, headers: dict, with_body=True):
      self.send_response(code)
      for k, v in {"Content-Length": str(len(body)), **headers}.items():
        self.send_header(k, v)
      self.end_headers()
      if with_body:
        self.wfile.write(body)

    def _resolve(self, with_body: bool):
      parts = self.path.split("?")[0].strip("/").split("/")
      full = None
      if len(parts) >= 5 and parts[2] == "resolve":
        full = os.path.join(root, parts[0], parts[1], *parts[4:])
      if full is None or not os.path.isfile(full):
        return self._send(404, b"", {}, with_body)
      data = open(full, "rb").read()
      headers = {
        "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
        "X-Repo-Commit": COMMIT,
      }
      self._send(200, data, headers, with_body)

    def do_HEAD(self):
      self._resolve(False)

    def do_GET(self):
      path = self.path.split("?")[0]
      if not path.startswith("/api/models/"):
        return self._resolve(True)
      parts = path.split("/")
      repo = f"{parts[3]}/{parts[4]}"
      files = _files(root, repo)
      if not files:
        return self._send(404, b"", {})
      if "/tree/" in path:
        obj = [{"type": "file", "oid": COMMIT, **f} for f in files]
      else:
        siblings = [{"rfilename": f["path"], "size": f["size"]} for f in files]
        obj = {"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings}
      body = json.dumps(obj).encode()
      self._send(200, body, {"Content-Type": "application/json"})

  return Handler


if __name__ == "__main__":
  server = http.server.ThreadingHTTPServer(
    ("127.0.0.1", 0), handler(sys.argv[1])
  )
  print(server.server_address[1], flush=True)
  server.serve_forever()
