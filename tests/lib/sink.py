"""A scriptable SMTP sink for pgmta's tests (asyncio, standard library + ssl).

    from sink import Sink, Raw, Silence, Delay, Disconnect, Endless, DisconnectAfter
    s = Sink(rules={"rcpt:fail550@*": "550 5.1.1 no such user",
                    "rcpt:tmp451@*": "451 4.3.0 try later"})
    ... deliver to 127.0.0.1:s.port ...
    s.messages()[0].content      # un-stuffed message bytes
    s.stop()

The sink runs its own event loop in a background thread. It records every
session (peer and local address, connect/close time, HELO name, TLS version
and cipher, every command line, whether commands arrived pipelined) and every
message (mail_from, accepted rcpts, `raw`: the DATA bytes exactly as received
up to and including the CRLF before the final ".", and `content`: the same
with dot-stuffing removed). Only CRLF.CRLF ends DATA (SMTP smuggling safe):
"\\n.\\n", "\\r.\\r\\n" and friends are recorded as content.

Rules: a dict from "event" or "event:pattern" to an action. Events:

    connect            before the greeting (default: nothing)
    greeting           the banner (default "220 sink.test ESMTP")
    ehlo, helo         reply to EHLO/HELO (default: 250 + capabilities)
    starttls           reply to STARTTLS (default "220 2.0.0 ready", then TLS)
    mail:PATTERN       reply to MAIL FROM, PATTERN matches the sender
    rcpt:PATTERN       reply to RCPT TO, PATTERN matches the recipient
    data               reply to DATA (default 354, or 554 with no recipient; a
                       rule applies even without recipients)
    dot:PATTERN        reply after the message, PATTERN matches any accepted rcpt
    rset, noop, quit   replies to those commands

PATTERN is an fnmatch pattern, case-insensitive ("fail550@*", "*"); the first
matching rule (in dict order) wins. Actions:

    "550 5.1.1 no such user"        one reply; "\\n" separates lines written as given
    ["451 4.3.0 later", "250 ok"]   a sequence: the Nth use of this rule (counted
                                    across sessions) gets item N, the last repeats
    Raw(b"...", close=False)        bytes written exactly (NUL bytes, bad codes,
                                    a 1 MB line, extra bytes after 220 ...)
    Delay(seconds, action)          wait, then perform action
    Silence()                       never answer (reads and ignores until EOF)
    Disconnect()                    close the connection without a reply
    Endless(b"250-more")            continuation lines until the client leaves
    DisconnectAfter(n)              only for "data": 354, then close after n bytes

A `behaviour` callable (session, event, subject) -> action or None is asked
before the rules; None falls through to the rules and the default.

Standalone (quickstart demo): /usr/bin/python3 tests/lib/sink.py --port N [--host H]
prints one line per message received.
"""
import argparse
import asyncio
import copy
import fnmatch
import itertools
import ssl
import sys
import threading
import time


class Raw:
    def __init__(self, data, close=False):
        self.data = data
        self.close = close


class Delay:
    def __init__(self, seconds, action):
        self.seconds = seconds
        self.action = action


class Silence:
    pass


class Disconnect:
    pass


class Endless:
    def __init__(self, line=b"250-more", limit=512 * 1024 * 1024):
        self.line = line if line.endswith(b"\r\n") else line + b"\r\n"
        self.limit = limit


class DisconnectAfter:
    def __init__(self, nbytes):
        self.nbytes = nbytes


class Message:
    def __init__(self, session_id, mail_from, mail_params, rcpts, raw, reply):
        self.session_id = session_id
        self.mail_from = mail_from
        self.mail_params = mail_params
        self.rcpts = rcpts
        self.raw = raw
        self.content = unstuff(raw)
        self.reply = reply
        self.time = time.time()   # when the final dot was read

    def __repr__(self):
        return "Message(from=%r, rcpts=%r, %d bytes)" % (self.mail_from, self.rcpts, len(self.raw))


class Session:
    def __init__(self, sid, peer, local):
        self.id = sid
        self.peer = peer          # (ip, port)
        self.local = local        # (ip, port)
        self.connect_time = time.time()
        self.close_time = None
        self.helo = None
        self.tls = False
        self.tls_version = None
        self.tls_cipher = None
        self.commands = []        # every command line received (str)
        self.pipelined = 0        # commands that arrived while more input was buffered
        self.messages = []
        self.mail_from = None
        self.mail_params = ""
        self.rcpts = []

    def __repr__(self):
        return "Session(%d, peer=%s, helo=%r, tls=%s, %d commands)" % (
            self.id, self.peer, self.helo, self.tls_version, len(self.commands))


def unstuff(raw):
    """Removes dot-stuffing from DATA bytes (CRLF-separated lines)."""
    lines = raw.split(b"\r\n")
    return b"\r\n".join(l[1:] if l.startswith(b".") else l for l in lines)


class _Close(Exception):
    pass


class Sink:
    def __init__(self, host="127.0.0.1", port=None, tls_cert=None, tls_key=None,
                 offer_starttls=None, pipelining=True, rules=None, behaviour=None,
                 size=None, smtputf8=True, ehlo_keywords=None, banner_name="sink.test",
                 verbose=False):
        self.host = host
        self.rules = dict(rules or {})
        self.behaviour = behaviour
        self.pipelining = pipelining
        self.size = size
        self.smtputf8 = smtputf8
        self.ehlo_keywords = ehlo_keywords
        self.banner_name = banner_name
        self.verbose = verbose
        self.offer_starttls = bool(tls_cert) if offer_starttls is None else offer_starttls
        self.ssl_ctx = None
        if tls_cert:
            self.ssl_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ssl_ctx.load_cert_chain(tls_cert, tls_key)
        self._lock = threading.Lock()
        self._sessions = []
        self._messages = []
        self._conn_log = []
        self._active = 0
        self._max_active = 0
        self._seq = {}
        self._ids = itertools.count(1)
        self._queue_ids = itertools.count(1)
        self._ready = threading.Event()
        self._error = None
        self._tasks = set()
        self._want_port = port or 0
        self._thread = threading.Thread(target=self._thread_main, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error:
            raise self._error
        self.port = self._port

    # -- public, thread-safe accessors --
    def sessions(self):
        with self._lock:
            return copy.deepcopy(self._sessions)

    def messages(self):
        with self._lock:
            return copy.deepcopy(self._messages)

    def concurrent_max(self):
        with self._lock:
            return self._max_active

    def active(self):
        with self._lock:
            return self._active

    def connections_log(self):
        """[(time, "connect"|"close", session id, peer)] in order."""
        with self._lock:
            return list(self._conn_log)

    def commands(self):
        """Every command of every session, in order, as (session id, line)."""
        with self._lock:
            return [(s.id, c) for s in self._sessions for c in s.commands]

    def set_rule(self, key, action):
        with self._lock:
            self.rules[key] = action

    def stop(self):
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(10)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.stop()

    # -- event loop thread --
    def _thread_main(self):
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                # a receiver's accept queue, not asyncio's default of 100:
                # a burst of hundreds of connections (the long tail) must
                # wait in it, not have its SYNs dropped and retried for
                # longer than the client's connect timeout
                asyncio.start_server(self._handle, self.host, self._want_port,
                                     limit=8 * 1024 * 1024, backlog=1024))
            self._port = self._server.sockets[0].getsockname()[1]
        except Exception as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    def _shutdown(self):
        self._server.close()
        for t in list(self._tasks):
            t.cancel()

        async def finish():
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._loop.stop()
        self._loop.create_task(finish())

    def _log(self, *a):
        if self.verbose:
            print(*a, file=sys.stderr)

    def _lookup(self, sess, event, subject=None, subjects=None):
        if self.behaviour:
            a = self.behaviour(sess, event, subject)
            if a is not None:
                return a
        with self._lock:
            items = list(self.rules.items())
        cands = subjects if subjects is not None else [subject]
        for key, action in items:
            ev, _, pat = key.partition(":")
            if ev != event:
                continue
            if pat and not any(s is not None and fnmatch.fnmatch(s.lower(), pat.lower())
                               for s in cands):
                continue
            if isinstance(action, list):
                with self._lock:
                    n = self._seq.get(key, 0)
                    self._seq[key] = n + 1
                action = action[min(n, len(action) - 1)]
            return action
        return None

    async def _perform(self, action, sess, reader, writer):
        """Performs an action; returns the reply code sent (0 if none)."""
        if isinstance(action, str):
            out = b"".join(l.encode("utf-8", "surrogateescape") + b"\r\n"
                           for l in action.split("\n"))
            writer.write(out)
            await writer.drain()
            try:
                return int(action[:3])
            except ValueError:
                return 0
        if isinstance(action, Raw):
            writer.write(action.data)
            await writer.drain()
            if action.close:
                raise _Close()
            try:
                return int(action.data[:3])
            except ValueError:
                return 0
        if isinstance(action, Delay):
            await asyncio.sleep(action.seconds)
            return await self._perform(action.action, sess, reader, writer)
        if isinstance(action, Silence):
            while await reader.read(65536):
                pass
            raise _Close()
        if isinstance(action, Disconnect):
            raise _Close()
        if isinstance(action, Endless):
            sent = 0
            chunk = action.line * 256
            while sent < action.limit:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)
            raise _Close()
        raise TypeError("unknown sink action %r" % (action,))

    async def _respond(self, sess, reader, writer, event, default, subject=None, subjects=None):
        action = self._lookup(sess, event, subject, subjects)
        if action is None:
            action = default
        return action, await self._perform(action, sess, reader, writer)

    async def _readline(self, sess, reader):
        try:
            line = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError:
            return None
        except asyncio.LimitOverrunError:
            raise _Close()
        try:
            if len(reader._buffer) > 0:
                sess.pipelined += 1
        except AttributeError:
            pass
        return line.rstrip(b"\r\n")

    def _ehlo_reply(self, sess, name):
        lines = ["%s greets %s" % (self.banner_name, name)]
        if self.ehlo_keywords is not None:
            lines += list(self.ehlo_keywords)
        else:
            if self.pipelining:
                lines.append("PIPELINING")
            if self.size:
                lines.append("SIZE %d" % self.size)
            lines += ["8BITMIME", "ENHANCEDSTATUSCODES", "DSN"]
            if self.smtputf8:
                lines.append("SMTPUTF8")
            if self.offer_starttls and not sess.tls:
                lines.append("STARTTLS")
        return "\n".join(("250-" if i < len(lines) - 1 else "250 ") + l
                         for i, l in enumerate(lines))

    async def _read_data(self, sess, reader, writer, disconnect_after):
        buf = bytearray(b"\r\n")
        start = 0
        while True:
            idx = buf.find(b"\r\n.\r\n", start)
            if idx >= 0:
                raw = bytes(buf[2:idx + 2])
                rest = bytes(buf[idx + 5:])
                if rest:
                    # pipelined commands after the message: put them back
                    reader._buffer[0:0] = rest
                return raw
            start = max(0, len(buf) - 4)
            chunk = await reader.read(65536)
            if not chunk:
                raise _Close()
            buf += chunk
            if disconnect_after is not None and len(buf) - 2 >= disconnect_after:
                raise _Close()
            if len(buf) > 200 * 1024 * 1024:
                raise _Close()

    async def _handle(self, reader, writer):
        task = asyncio.current_task()
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")[:2]
        local = writer.get_extra_info("sockname")[:2]
        with self._lock:
            sess = Session(next(self._ids), peer, local)
            self._sessions.append(sess)
            self._active += 1
            self._max_active = max(self._max_active, self._active)
            self._conn_log.append((sess.connect_time, "connect", sess.id, peer))
        try:
            await self._session(sess, reader, writer)
        except (_Close, ConnectionError, ssl.SSLError, asyncio.CancelledError, OSError):
            pass
        finally:
            try:
                writer.transport.abort()
            except Exception:
                pass
            with self._lock:
                sess.close_time = time.time()
                self._active -= 1
                self._conn_log.append((sess.close_time, "close", sess.id, peer))
            self._tasks.discard(task)

    async def _session(self, sess, reader, writer):
        a = self._lookup(sess, "connect")
        if a is not None:
            await self._perform(a, sess, reader, writer)
        await self._respond(sess, reader, writer, "greeting", "220 %s ESMTP" % self.banner_name)
        while True:
            line = await self._readline(sess, reader)
            if line is None:
                return
            text = line.decode("utf-8", "surrogateescape")
            with self._lock:
                sess.commands.append(text)
            verb, _, arg = text.partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                with self._lock:
                    sess.helo = arg
                    sess.mail_from = None
                    sess.rcpts = []
                default = self._ehlo_reply(sess, arg) if verb == "EHLO" else (
                    "250 %s" % self.banner_name)
                await self._respond(sess, reader, writer, verb.lower(), default)
            elif verb == "STARTTLS":
                if not self.ssl_ctx or sess.tls:
                    await self._perform("502 5.5.1 not available", sess, reader, writer)
                    continue
                _, code = await self._respond(sess, reader, writer, "starttls", "220 2.0.0 ready")
                if code != 220:
                    continue
                reader._buffer.clear()  # bytes sent before the handshake are discarded
                await writer.start_tls(self.ssl_ctx)
                so = writer.get_extra_info("ssl_object")
                with self._lock:
                    sess.tls = True
                    sess.tls_version = so.version()
                    sess.tls_cipher = so.cipher()[0]
                    sess.helo = None
                    sess.mail_from = None
                    sess.rcpts = []
            elif verb == "MAIL":
                addr, params = _parse_path(arg, "FROM:")
                if addr is None:
                    await self._perform("501 5.5.4 syntax: MAIL FROM:<address>", sess, reader,
                                        writer)
                    continue
                _, code = await self._respond(sess, reader, writer, "mail", "250 2.1.0 Ok",
                                              subject=addr)
                if 200 <= code < 300:
                    with self._lock:
                        sess.mail_from = addr
                        sess.mail_params = params
                        sess.rcpts = []
            elif verb == "RCPT":
                addr, _ = _parse_path(arg, "TO:")
                if sess.mail_from is None:
                    await self._perform("503 5.5.1 need MAIL first", sess, reader, writer)
                    continue
                if addr is None:
                    await self._perform("501 5.5.4 syntax: RCPT TO:<address>", sess, reader,
                                        writer)
                    continue
                _, code = await self._respond(sess, reader, writer, "rcpt", "250 2.1.5 Ok",
                                              subject=addr)
                if 200 <= code < 300:
                    with self._lock:
                        sess.rcpts.append(addr)
            elif verb == "DATA":
                action = self._lookup(sess, "data")
                if action is None and (sess.mail_from is None or not sess.rcpts):
                    await self._perform("554 5.5.1 no valid recipients", sess, reader, writer)
                    continue
                after = None
                if isinstance(action, DisconnectAfter):
                    after = action.nbytes
                    action = None
                code = await self._perform(action or "354 End data with <CR><LF>.<CR><LF>",
                                           sess, reader, writer)
                if code != 354:
                    continue
                raw = await self._read_data(sess, reader, writer, after)
                qid = next(self._queue_ids)
                action = self._lookup(sess, "dot", subjects=list(sess.rcpts))
                if action is None:
                    action = "250 2.0.0 Ok: queued as %d" % qid
                reply_text = action if isinstance(action, str) else repr(action)
                msg = Message(sess.id, sess.mail_from or "", sess.mail_params, list(sess.rcpts), raw,
                              reply_text)
                # Recorded before the reply, so that a test waiting for the
                # message sees it even if the reply action closes the session.
                with self._lock:
                    sess.messages.append(msg)
                    self._messages.append(msg)
                    sess.mail_from = None
                    sess.rcpts = []
                self._log("message session=%d from=%s rcpts=%s bytes=%d" % (
                    sess.id, msg.mail_from, ",".join(msg.rcpts), len(raw)))
                await self._perform(action, sess, reader, writer)
            elif verb == "RSET":
                with self._lock:
                    sess.mail_from = None
                    sess.rcpts = []
                await self._respond(sess, reader, writer, "rset", "250 2.0.0 Ok")
            elif verb == "NOOP":
                await self._respond(sess, reader, writer, "noop", "250 2.0.0 Ok")
            elif verb == "QUIT":
                await self._respond(sess, reader, writer, "quit", "221 2.0.0 Bye")
                return
            else:
                await self._perform("502 5.5.2 command not recognized", sess, reader, writer)


def _parse_path(arg, prefix):
    """'FROM:<a@b> SIZE=1' -> ('a@b', 'SIZE=1'); (None, '') on bad syntax."""
    if not arg.upper().startswith(prefix):
        return None, ""
    rest = arg[len(prefix):].lstrip()
    if not rest.startswith("<"):
        return None, ""
    end = rest.find(">")
    if end < 0:
        return None, ""
    return rest[1:end], rest[end + 1:].strip()


class SendResult:
    """Parsed output of tests/tools/smtp_send."""

    def __init__(self, rc, out, err, elapsed, maxrss_kb):
        self.rc = rc
        self.out = out
        self.err = err
        self.elapsed = elapsed
        self.maxrss_kb = maxrss_kb
        self.results = []   # dicts: rcpt, outcome, code, status, reply, batch, msg
        self.conns = []     # dicts: host, ip, source, tls, cipher, usable, batch
        for line in out.splitlines():
            kv = _parse_kv(line)
            if line.startswith("rcpt="):
                kv["code"] = int(kv["code"])
                kv["batch"] = int(kv["batch"])
                kv["msg"] = int(kv["msg"])
                self.results.append(kv)
            elif line.startswith("conn "):
                kv["usable"] = kv["usable"] == "1"
                kv["batch"] = int(kv["batch"])
                self.conns.append(kv)

    def rcpt(self, addr, batch=0):
        """The result for ADDR in BATCH (the first if several messages share it)."""
        for r in self.results:
            if r["rcpt"] == addr and r["batch"] == batch:
                return r
        raise AssertionError("no result for %s in batch %d:\n%s%s" % (addr, batch, self.out,
                                                                       self.err[-4000:]))

    def __repr__(self):
        return "SendResult(rc=%s)\n%s\n%s" % (self.rc, self.out, self.err[-4000:])


def _parse_kv(line):
    out = {}
    i = line.find(" ") if line.startswith("conn ") else -1
    i += 1
    n = len(line)
    while i < n:
        eq = line.find("=", i)
        if eq < 0:
            break
        key = line[i:eq]
        j = eq + 1
        if j < n and line[j] == '"':
            j += 1
            val = []
            while j < n and line[j] != '"':
                if line[j] == "\\" and j + 1 < n:
                    j += 1
                    val.append({"n": "\n", "r": "\r"}.get(line[j], line[j]))
                else:
                    val.append(line[j])
                j += 1
            out[key] = "".join(val)
            j += 1
        else:
            sp = line.find(" ", j)
            sp = n if sp < 0 else sp
            out[key] = line[j:sp]
            j = sp
        i = j + 1
    return out


def smtp_send(args, timeout=60, env=None):
    """Runs tests/tools/smtp_send with ARGS; returns a SendResult (with the
    child's peak memory from wait4)."""
    import os
    import subprocess
    import tempfile
    import pgmta_test
    full_env = dict(os.environ)
    full_env.update(env or {})
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        p = subprocess.Popen([pgmta_test.tool("smtp_send")] + [str(a) for a in args],
                             stdout=out, stderr=err, env=full_env)
        deadline = start + timeout
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.01)
        p.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - start
        out.seek(0)
        err.seek(0)
        r = SendResult(p.returncode, out.read().decode("utf-8", "replace"),
                       err.read().decode("utf-8", "replace"), elapsed, ru.ru_maxrss)
        # A sanitizer build reports memory errors, leaks and undefined
        # behaviour on stderr: every test using this driver fails on them.
        for marker in ("Sanitizer", "runtime error:"):
            if marker in r.err:
                raise AssertionError("smtp_send: sanitizer report:\n" + r.err[-8000:])
        return r


def main():
    ap = argparse.ArgumentParser(description="pgmta test SMTP sink")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    args = ap.parse_args()
    seen = 0
    s = Sink(host=args.host, port=args.port, tls_cert=args.tls_cert, tls_key=args.tls_key)
    print("sink listening on %s:%d" % (args.host, s.port), flush=True)
    try:
        while True:
            time.sleep(0.2)
            msgs = s.messages()
            for m in msgs[seen:]:
                subj = b""
                for line in m.content.split(b"\r\n"):
                    if not line:
                        break
                    if line.lower().startswith(b"subject:"):
                        subj = line[8:].strip()
                print("message from=<%s> rcpts=%s bytes=%d subject=%r" % (
                    m.mail_from, ",".join("<%s>" % r for r in m.rcpts), len(m.raw),
                    subj.decode("utf-8", "replace")), flush=True)
            seen = len(msgs)
    except KeyboardInterrupt:
        pass
    finally:
        s.stop()


if __name__ == "__main__":
    main()
