"""Shared by the tests of the SMTP listener's authentication and security
(test_security.py, test_auth_limits.py): raw STARTTLS sessions from a chosen
loopback address, AUTH PLAIN, and a class fixture that starts one
PostgreSQL and one node with a STARTTLS listener for the whole class."""
import base64
import socket
import ssl
import unittest

from pgmta_test import PgServer, Pgmtad, free_port, make_cert, tmpdir, wait_for


def smtp_reply(fh):
    """One SMTP reply read from fh: (code, lines). ConnectionError when the
    server closed the connection."""
    lines = []
    while True:
        ln = fh.readline()
        if not ln:
            raise ConnectionError("connection closed")
        lines.append(ln)
        if ln[3:4] != b"-":
            return int(ln[:3]), lines


def starttls_session(port, source="127.0.0.1"):
    """A STARTTLS session with the listener on 127.0.0.1:port from the
    loopback address source, after EHLO: (TLS socket, its file)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60, source_address=(source, 0))
    f = s.makefile("rb")
    assert smtp_reply(f)[0] == 220
    s.sendall(b"EHLO client.test\r\n")
    smtp_reply(f)
    s.sendall(b"STARTTLS\r\n")
    assert smtp_reply(f)[0] == 220
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    t = ctx.wrap_socket(s, server_hostname="mx.pgmta.test")
    tf = t.makefile("rb")
    t.sendall(b"EHLO client.test\r\n")
    smtp_reply(tf)
    return t, tf


def auth_plain(user, password):
    return b"AUTH PLAIN " + base64.b64encode(b"\0" + user + b"\0" + password) + b"\r\n"


class ListenerNode(unittest.TestCase):
    """One PostgreSQL and one node for the class, its listener on
    127.0.0.1:cls.port with STARTTLS and no allowed client. Subclasses set
    users (the smtp-listener.users entries), extra_listener (more
    smtp-listener directives) and processes (smtp-in processes; None: the
    default); setUpClass returns once every smtp-in process has its database
    connection."""
    users = ""
    extra_listener = ""
    processes = None
    start_timeout = 20

    @classmethod
    def setUpClass(cls):
        cls.dir = tmpdir()
        cls.cert, cls.key = make_cert(cls.dir, cn="mx.pgmta.test")
        cls.pg = PgServer()
        cls.port = free_port()
        procs = "" if cls.processes is None else "processes = %d; " % cls.processes
        extra = ('log-level = "debug";\n'
                 'listen = { smtp = [ "127.0.0.1:%d" ]; };\n'
                 'smtp-listener = { tls-cert = "%s"; tls-key = "%s"; allow = [ ]; %s%s '
                 'users = ( %s ); };\n'
                 % (cls.port, cls.cert, cls.key, procs, cls.extra_listener, cls.users))
        cls.node = Pgmtad(cls.pg, extra=extra)
        want = cls.processes or 1

        def up():
            if not cls.node.proc.alive():
                raise AssertionError("pgmtad exited:\n" + cls.node.log()[-3000:])
            try:
                socket.create_connection(("127.0.0.1", cls.port), timeout=1).close()
            except OSError:
                return False
            return cls.node.log().count("db=pgmtad-smtp-in event=connected") >= want
        wait_for(up, timeout=cls.start_timeout, what="the listener")

    @classmethod
    def tearDownClass(cls):
        cls.node.stop()
