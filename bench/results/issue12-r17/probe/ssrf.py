import json, os, sys, time, threading
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nats import Nats
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(s):
        s.send_response(302); s.send_header("Location", "http://169.254.169.254/latest"); s.send_header("Content-Length", "0"); s.end_headers()
    def log_message(s, *a): pass
srv = HTTPServer(("127.0.0.1", 18181), H); threading.Thread(target=srv.serve_forever, daemon=True).start()
port = int(sys.argv[1])
n = Nats(port); n.sub("caf.exec.result.v1"); time.sleep(0.3)
urls = ["http://2852039166/", "http://0251.0376.0251.0376/", "http://169.254.169.254./", "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/", "http://0xa9fea9fe/", "http://169.254.169.254:80@example.com/", "http://example.com@169.254.169.254/",
        "http://[fe80::1%25eth0]/", "http://0.0.0.0:18181/", "http://[::]:18181/", "http://127.0.0.1:18181/redirect", "http://169.254.1/", "http://[0:0:0:0:0:ffff:169.254.169.254]/"]
for i, u in enumerate(urls):
    n.pub("caf.exec.assign.v1", json.dumps({"version": "1", "assignment_id": f"s{i}", "tenant_id": "t1", "job": {"type": "http.request", "method": "GET", "url": u, "timeout_ms": 3000}}))
msgs = n.collect(8)
res = {}
for subj, h, p in msgs:
    d = json.loads(p); res[d["assignment_id"]] = d
for i, u in enumerate(urls):
    d = res.get(f"s{i}")
    if not d: print(u, "NO RESULT"); continue
    e = d.get("error") or {}
    print(u, "|", d["status"], e.get("code"), str(e.get("message"))[:90], "|", json.dumps(d.get("result"))[:120])
