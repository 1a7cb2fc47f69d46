"""A minimal W3C WebDriver client for the dashboard's browser tests: one
ChromeDriver process driving one headless Chromium session, spoken with
urllib (standard library only), and a PNG decoder (zlib, struct) for its
screenshots.

    wd = WebDriver()
    wd.get("http://127.0.0.1:8080/#token=...")
    wd.run("return document.title")
    img = decode_png(wd.screenshot())     # img.pixel(x, y) -> (r, g, b)
    img = decode_png(wd.screenshot(wd.find("//svg")))   # one element
    wd.quit()
"""
import base64
import json
import os
import shutil
import struct
import urllib.error
import urllib.request
import zlib

from pgmta_test import Proc, free_port, tmpdir, wait_for

CHROMEDRIVER = "/usr/bin/chromedriver"


class WebDriverError(Exception):
    def __init__(self, status, value):
        super().__init__("%s: %s" % (status, value.get("error")))
        self.error = value.get("error")
        self.value = value


class WebDriver:
    """A minimal W3C WebDriver client: one ChromeDriver, one session."""

    def __init__(self, width=1400, height=900):
        if not os.access(CHROMEDRIVER, os.X_OK) or not shutil.which("chromium"):
            raise AssertionError("chromedriver or chromium missing (admin/deps.sh --tests)")
        self.port = free_port()
        self.dir = tmpdir("pgmta-webdriver-")
        self.proc = Proc([CHROMEDRIVER, "--port=%d" % self.port,
                          "--allowed-ips=127.0.0.1"],
                         os.path.join(self.dir, "chromedriver.log"))
        self.base = "http://127.0.0.1:%d" % self.port
        wait_for(self._ready, timeout=20, what="chromedriver to answer")
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=%d,%d" % (width, height),
                         "--force-device-scale-factor=1",
                         "--user-data-dir=" + os.path.join(self.dir, "profile")]}}}}
        self.session = self._call("POST", "/session", caps, timeout=60)["sessionId"]

    def _ready(self):
        try:
            return self._call("GET", "/status", timeout=2)["ready"]
        except (OSError, WebDriverError):
            return False

    def _call(self, method, path, body=None, timeout=30):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())["value"]
        except urllib.error.HTTPError as e:
            raise WebDriverError(e.code, json.loads(e.read())["value"]) from None

    def cmd(self, method, path, body=None, timeout=30):
        return self._call(method, "/session/%s%s" % (self.session, path), body, timeout)

    def get(self, url):
        self.cmd("POST", "/url", {"url": url}, timeout=60)

    def refresh(self):
        self.cmd("POST", "/refresh", {}, timeout=60)

    def run(self, script, *args):
        return self.cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def find(self, xpath):
        """The first element matching xpath, or None."""
        found = self.cmd("POST", "/elements", {"using": "xpath", "value": xpath})
        return found[0] if found else None

    def click(self, element):
        self.cmd("POST", "/element/%s/click" % list(element.values())[0], {})

    def screenshot(self, element=None):
        """PNG bytes of the viewport, or of one element (scrolled into view)."""
        path = "/element/%s/screenshot" % list(element.values())[0] if element else "/screenshot"
        return base64.b64decode(self.cmd("GET", path, timeout=60))

    def quit(self):
        try:
            self.cmd("DELETE", "", timeout=30)
        except (OSError, WebDriverError):
            pass
        self.proc.stop()


class Image:
    def __init__(self, width, height, channels, rows):
        self.width, self.height, self.channels, self.rows = width, height, channels, rows

    def pixel(self, x, y):
        """(r, g, b) at x, y."""
        i = x * self.channels
        return tuple(self.rows[y][i:i + 3])

    def colours(self, x0, y0, x1, y1):
        """{(r, g, b): pixels} in the rectangle [x0, x1) x [y0, y1)."""
        out = {}
        for y in range(max(0, y0), min(self.height, y1)):
            row = self.rows[y]
            for x in range(max(0, x0), min(self.width, x1)):
                i = x * self.channels
                c = (row[i], row[i + 1], row[i + 2])
                out[c] = out.get(c, 0) + 1
        return out


def decode_png(data):
    """Decodes an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium's
    screenshots are) into an Image; anything else is an AssertionError."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, ihdr = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        crc, = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, "PNG chunk %r: bad CRC" % kind
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + length
    width, height, depth, ctype, _, _, interlace = ihdr
    assert depth == 8 and ctype in (2, 6) and interlace == 0, "unsupported PNG %r" % (ihdr,)
    ch = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * ch
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - ch] if i >= ch else 0
            b = prev[i]
            c = prev[i - ch] if i >= ch else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xff
            elif f == 2:
                line[i] = (line[i] + b) & 0xff
            elif f == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xff
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) \
                    & 0xff
            else:
                assert f == 0, "PNG filter %d" % f
        rows.append(line)
        prev = line
    return Image(width, height, ch, rows)
