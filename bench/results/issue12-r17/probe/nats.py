# Issue 12, seventeenth round: a minimal NATS client on the raw protocol (CONNECT, SUB, PUB,
# HPUB, MSG, HMSG), so that the probe needs no client library.
import socket, json, time, threading, queue
class Nats:
    def __init__(s, port):
        s.sock = socket.create_connection(("127.0.0.1", port))
        s.buf = b""; s.q = queue.Queue(); s.lock = threading.Lock()
        s._line()
        s.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\nPING\r\n')
        threading.Thread(target=s._reader, daemon=True).start()
        s.sid = 0
    def _line(s):
        while b"\r\n" not in s.buf:
            d = s.sock.recv(65536)
            if not d: raise EOFError
            s.buf += d
        l, s.buf = s.buf.split(b"\r\n", 1); return l
    def _n(s, n):
        while len(s.buf) < n + 2:
            d = s.sock.recv(65536)
            if not d: raise EOFError
            s.buf += d
        p, s.buf = s.buf[:n], s.buf[n+2:]; return p
    def _reader(s):
        try:
            while True:
                l = s._line()
                if l.startswith(b"MSG "):
                    parts = l.split(); n = int(parts[-1]); p = s._n(n)
                    s.q.put((parts[1].decode(), {}, p))
                elif l.startswith(b"HMSG "):
                    parts = l.split(); hl = int(parts[-2]); tl = int(parts[-1]); p = s._n(tl)
                    hdr = {}
                    for hline in p[:hl].split(b"\r\n")[1:]:
                        if b":" in hline:
                            k, v = hline.split(b":", 1); hdr[k.decode().strip()] = v.decode().strip()
                    s.q.put((parts[1].decode(), hdr, p[hl:]))
                elif l == b"PING":
                    with s.lock: s.sock.sendall(b"PONG\r\n")
                elif l.startswith(b"-ERR"):
                    print("ERR", l)
        except EOFError:
            pass
    def sub(s, subj):
        s.sid += 1
        with s.lock: s.sock.sendall(f"SUB {subj} {s.sid}\r\n".encode())
    def pub(s, subj, payload, headers=None):
        if isinstance(payload, str): payload = payload.encode()
        with s.lock:
            if headers:
                h = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"
                s.sock.sendall(f"HPUB {subj} {len(h)} {len(h)+len(payload)}\r\n".encode() + h + payload + b"\r\n")
            else:
                s.sock.sendall(f"PUB {subj} {len(payload)}\r\n".encode() + payload + b"\r\n")
    def collect(s, secs):
        out = []; end = time.time() + secs
        while True:
            t = end - time.time()
            if t <= 0: break
            try: out.append(s.q.get(timeout=t))
            except queue.Empty: break
        return out
