import json, os, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nats import Nats
port = int(sys.argv[1])
n = Nats(port); n.sub("caf.exec.result.v1"); n.sub("caf.exec.dlq.v1"); n.sub("caf.exec.assign.v1.ack"); time.sleep(0.3)
escs = [r"\ud800", r"\ud800x", r"\ud800\u0041", r"\udc00", r"\ud800\udc00", r"\uZZZZ", r"\u12", r"\uD83D\uDE00", r"\u0000", r"\\ud800", r"\ud800\\", r"\udbff\udfff", r"\ud800\ud800"]
for i, e in enumerate(escs):
    p = '{"version":"1","assignment_id":"e%d","tenant_id":"t1","request_id":"a%sb","job":{"type":"fs.get","path":"/x"}}' % (i, e)
    n.pub("caf.exec.assign.v1", p)
msgs = n.collect(3)
for i, e in enumerate(escs):
    got = []
    for s, h, p in msgs:
        d = json.loads(p)
        a = d.get("assignment") or {}
        aid = d.get("assignment_id") or (a.get("assignment_id") if isinstance(a, dict) else None)
        if aid == f"e{i}" or (d.get("payload") and f'"e{i}"' in d.get("payload")):
            got.append(s.split(".")[-1] + ":" + str(d.get("status")) + ":" + json.dumps(d.get("request_id")) + ":" + str((d.get("error") or {}).get("message", ""))[:60])
    print(e, "->", got)
