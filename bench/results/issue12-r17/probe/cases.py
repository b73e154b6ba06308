import json, os, sys, time, base64
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nats import Nats
port = int(sys.argv[1]); wait = float(sys.argv[2]) if len(sys.argv) > 2 else 3
n = Nats(port); n.sub("caf.exec.>"); n.sub("caf.human.>"); time.sleep(0.3)
def A(aid, job, **kw):
    d = {"version": "1", "assignment_id": aid, "tenant_id": "t1", "request_id": "r-" + aid, "trace_id": "tr-" + aid, "job": job}
    d.update(kw); return d
cases = []
def C(name, payload, headers=None):
    if not isinstance(payload, (bytes, str)): payload = json.dumps(payload)
    cases.append((name, payload, headers))
C("garbage", "not json at all")
C("nonutf8", b"\xff\xfe{\"a\":1}")
C("array", "[1,2,3]")
C("empty-obj", "{}")
C("aid-number", {"version": "1", "assignment_id": 123, "tenant_id": "t1", "job": {"type": "fs.get", "path": "/x"}})
C("aid-empty", {"version": "1", "assignment_id": "", "tenant_id": "t1", "job": {"type": "fs.get", "path": "/x"}})
C("aid-long", A("L" * 129, {"type": "fs.get", "path": "/x"}))
C("aid-128", A("M" * 128, {"type": "fs.get", "path": "/nope"}))
C("no-tenant", {"version": "1", "assignment_id": "p-notenant", "job": {"type": "fs.get", "path": "/x"}})
C("tenant-empty", {"version": "1", "assignment_id": "p-tenantempty", "tenant_id": "", "job": {"type": "fs.get", "path": "/x"}})
C("tenant-dotdot", {"version": "1", "assignment_id": "p-tenantdd", "tenant_id": "..", "job": {"type": "fs.get", "path": "/x"}})
C("tenant-slash", {"version": "1", "assignment_id": "p-tenantsl", "tenant_id": "a/../../etc", "job": {"type": "fs.get", "path": "/passwd"}})
C("tenant-number", {"version": "1", "assignment_id": "p-tenantnum", "tenant_id": 5, "job": {"type": "fs.get", "path": "/x"}})
C("no-version", {"assignment_id": "p-nover", "tenant_id": "t1", "job": {"type": "fs.get", "path": "/x"}})
C("version-2", A("p-ver2", {"type": "fs.get", "path": "/x"}, version="2"))
C("version-int", A("p-verint", {"type": "fs.get", "path": "/x"}, version=1))
C("no-job", {"version": "1", "assignment_id": "p-nojob", "tenant_id": "t1"})
C("job-string", A("p-jobstr", "fs.get"))
C("job-notype", A("p-jobnotype", {"path": "/x"}))
C("job-type-unknown", A("p-jobunk", {"type": "rm.rf"}))
C("job-type-num", A("p-jobtypenum", {"type": 7}))
C("timeout-neg", A("p-toneg", {"type": "fs.get", "path": "/x", "timeout_ms": -5}))
C("timeout-str", A("p-tostr", {"type": "fs.get", "path": "/x", "timeout_ms": "100"}))
C("timeout-huge", A("p-tohuge", {"type": "fs.get", "path": "/x", "timeout_ms": 1e30}))
C("timeout-zero", A("p-tozero", {"type": "fs.get", "path": "/x", "timeout_ms": 0}))
C("timeout-float", A("p-tofloat", {"type": "fs.get", "path": "/x", "timeout_ms": 100.5}))
C("dupkey", '{"version":"1","assignment_id":"p-dup1","assignment_id":"p-dup2","tenant_id":"t1","job":{"type":"fs.get","path":"/x"}}')
C("lone-surrogate", '{"version":"1","assignment_id":"p-surr","tenant_id":"t1","request_id":"\\ud800","job":{"type":"fs.get","path":"/x"}}')
C("nul-in-path", A("p-nul", {"type": "fs.get", "path": "/a\u0000b"}))
C("path-dotdot", A("p-pdd", {"type": "fs.get", "path": "/../../../etc/passwd"}))
C("path-abs", A("p-pabs", {"type": "fs.get", "path": "/etc/passwd"}))
C("path-empty", A("p-pempty", {"type": "fs.get", "path": ""}))
C("path-missing", A("p-pmiss", {"type": "fs.get"}))
C("put-then-get", A("p-put", {"type": "fs.put", "path": "/d/x.json", "content": "{\"a\":1}", "content_type": "application/json"}))
C("put-dir-over-file", A("p-putdir", {"type": "fs.put", "path": "/d/x.json/y", "content": "z"}))
C("put-content-num", A("p-putnum", {"type": "fs.put", "path": "/d/n", "content": 5}))
C("sql-attach", A("p-sqlatt", {"type": "sql.query", "connection_string": "sqlite://db.sqlite", "query": "ATTACH '/tmp/x.db' AS x"}))
C("sql-insert", A("p-sqlins", {"type": "sql.query", "connection_string": "sqlite://db.sqlite", "query": "INSERT INTO users VALUES('9','x','y')"}))
C("sql-select", A("p-sqlsel", {"type": "sql.query", "connection_string": "sqlite://db.sqlite", "query": "SELECT * FROM users WHERE id = ?", "parameters": ["123"]}))
C("sql-conn-escape", A("p-sqlesc", {"type": "sql.query", "connection_string": "sqlite://../../etc/passwd", "query": "SELECT 1"}))
C("sql-conn-abs", A("p-sqlabs", {"type": "sql.query", "connection_string": "sqlite:///etc/passwd", "query": "SELECT 1"}))
C("sql-pg", A("p-sqlpg", {"type": "sql.query", "connection_string": "postgres://localhost/x", "query": "SELECT 1"}))
C("sql-multi", A("p-sqlmulti", {"type": "sql.query", "connection_string": "sqlite://db.sqlite", "query": "SELECT 1; DROP TABLE users"}))
C("sql-params-obj", A("p-sqlpobj", {"type": "sql.query", "connection_string": "sqlite://db.sqlite", "query": "SELECT ?", "parameters": {"a": 1}}))
C("http-loopback", A("p-http127", {"type": "http.request", "method": "GET", "url": "http://127.0.0.1:4222/"}))
C("http-metadata", A("p-httpmeta", {"type": "http.request", "method": "GET", "url": "http://169.254.169.254/latest/meta-data"}))
C("http-decimal-ip", A("p-httpdec", {"type": "http.request", "method": "GET", "url": "http://2130706433/"}))
C("http-v6-mapped", A("p-httpv6", {"type": "http.request", "method": "GET", "url": "http://[::ffff:127.0.0.1]/"}))
C("http-localhost", A("p-httplh", {"type": "http.request", "method": "GET", "url": "http://localhost:9090/metrics"}))
C("http-file", A("p-httpfile", {"type": "http.request", "method": "GET", "url": "file:///etc/passwd"}))
C("http-bad-method", A("p-httpmeth", {"type": "http.request", "method": "GE T", "url": "https://example.com/"}))
C("http-headers-str", A("p-httphs", {"type": "http.request", "method": "GET", "url": "http://127.0.0.1/", "headers": "not json"}))
C("http-crlf-header", A("p-httpcrlf", {"type": "http.request", "method": "GET", "url": "https://example.com/", "headers": {"X": "a\r\nInjected: 1"}}))
C("human-no-approvers", A("p-hnoappr", {"type": "human.approval", "prompt": "ok?", "timeout_ms": 500}))
C("human-short", A("p-hshort", {"type": "human.approval", "prompt": "ok?", "timeout_ms": 300, "approvers": ["a@x"]}))
C("header-tenant", json.dumps({"version": "1", "assignment_id": "p-hdrten", "job": {"type": "fs.get", "path": "/nope"}}), {"tenant_id": "t9", "trace_id": "trh"})
C("deep", '{"version":"1","assignment_id":"p-deep","tenant_id":"t1","x":' + "[" * 100000 + "]" * 100000 + ',"job":{"type":"fs.get","path":"/x"}}')
C("retry-bad", A("p-retrybad", {"type": "fs.get", "path": "/x"}, retry_config={"max_attempts": -1}))
C("retry-huge", A("p-retryhuge", {"type": "fs.get", "path": "/x"}, retry_config={"max_attempts": 1000000000, "initial_backoff_ms": 1}))
C("dedupe-1", A("p-dedupe", {"type": "fs.get", "path": "/d/x.json"}))
for name, payload, headers in cases:
    n.pub("caf.exec.assign.v1", payload, headers)
    time.sleep(0.02)
time.sleep(0.5)
n.pub("caf.exec.assign.v1", json.dumps(A("p-dedupe", {"type": "fs.get", "path": "/d/x.json"})))
msgs = n.collect(wait)
by = {}
for subj, hdr, p in msgs:
    if subj.endswith("assign.v1") or subj.endswith("cancel.v1"): continue
    try: d = json.loads(p)
    except Exception: print("UNPARSEABLE on", subj, p[:200]); continue
    aid = d.get("assignment_id") if isinstance(d, dict) else None
    if subj.endswith("dlq.v1") and aid is None:
        aid = "<none>:" + str(d.get("payload", d.get("payload_base64", d.get("assignment"))))[:40]
    by.setdefault(str(aid)[:40], []).append((subj, d))
for aid, lst in by.items():
    row = []
    for subj, d in lst:
        k = subj.split(".")[-2] + "." + subj.split(".")[-1]
        e = d.get("error") or {}
        row.append(f"{k}:{d.get('status','')}:{e.get('code','')}:{d.get('error_code','')}:{str(e.get('message',''))[:60]}")
    print(aid, "|", " || ".join(row))
json.dump([(s, h, p.decode("utf-8", "replace")) for s, h, p in msgs], open("/tmp/probe/msgs.json", "w"))  # every message, for a closer look
