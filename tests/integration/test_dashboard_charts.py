"""The dashboard's charts and breakdowns in a real headless Chromium
(tests/lib/webdriver.py) against a real pgmtad delivering to a real SMTP
sink, compared with SQL.

The node delivers mail of two domains through the "transactional" pipe: most
recipients are accepted, some get 550 with two different texts (two bounce
categories), some get 451 until the sink is told to accept them (deferrals,
then deliveries); the sender's domain takes the delivery status
notifications. Mail for two more domains sits in the "bulk" pipe, which
the node does not run: the backlog, one of its queues paused. Once the
accounting no longer changes, the page must show per type the totals of
mta.acct, the bounce categories and the top queue as SQL counts them, the
node's throughput, and a screenshot of each chart must show it drawn: the
chart's SVG paths are long, and its pixels hold the series' colours. More
data and a redraw must not move the sections below the charts.
"""
import os
import unittest

from dnsserver import DnsServer
from pgmta_test import PgServer, Pgmtad, free_port, main, mx_sink, wait_for, wait_queue_empty
from test_http_api import TOKEN, Client, enqueue, stop_node
from webdriver import WebDriver, decode_png

DELIVERED, UNKNOWN, SPAM, LATER = 12, 5, 2, 3
COLORS = {"delivered": (0x1F, 0x7A, 0x3A), "bounced": (0xB3, 0x26, 0x1E),
          "deferred": (0xD0, 0x87, 0x00)}


def near(c, want, tol=40):
    return all(abs(a - b) <= tol for a, b in zip(c, want))


class DashboardChartsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.dns = DnsServer()
        smtp = free_port("127.0.0.43")
        cls.sink = mx_sink(cls.dns, ["c1.test", "c2.test", "sender.test"], "127.0.0.43", smtp, rules={
            "rcpt:unknown*@*": "550 5.1.1 no such user",
            "rcpt:spam*@*": "550 5.7.1 message refused as spam",
            "rcpt:later*@*": "451 4.3.0 try again later"})
        cls.port = free_port()
        cls.node = Pgmtad(cls.pg, cls.dns, pipes='( { name = "transactional"; processes = 1; } )',
                          extra='smtp-port = %d;\ndefault-pipe = "transactional";\n'
                                'listen = { http = "127.0.0.1:%d"; };\n'
                                'http = { token = "%s"; };\n' % (smtp, cls.port, TOKEN),
                          defaults='retry-after = "1s"; max-retry-after = "1s"')
        cls.client = Client(cls.port)
        wait_for(cls.client.up, timeout=20, what="the HTTP API to answer")
        rcpts = (["ok%d@c%d.test" % (i, 1 + i % 2) for i in range(DELIVERED)] +
                 ["unknown%d@c1.test" % i for i in range(UNKNOWN)] +
                 ["spam%d@c2.test" % i for i in range(SPAM)] +
                 ["later%d@c1.test" % i for i in range(LATER)])
        enqueue(cls.pg, rcpts, pipe="transactional")
        # the backlog: nothing runs "bulk"
        enqueue(cls.pg, ["u%d@big.test" % i for i in range(7)])
        enqueue(cls.pg, ["u%d@small.test" % i for i in range(2)])
        cls.pg.query("SELECT mta.pause_queue('big.test', NULL)")
        # two IP warm-up plans, one of them held by the admin
        cls.pg.query("SELECT mta.warmup_set('192.0.2.1', 'warm.test', ARRAY[500, 1000],"
                     " ARRAY[50, 100])")
        cls.pg.query("SELECT mta.warmup_set('192.0.2.2', 'rollup:big', ARRAY[20], ARRAY[5])")
        cls.pg.query("SELECT mta.warmup_pause('192.0.2.2', 'rollup:big', true)")
        # every 451 recipient deferred at least twice, then accepted
        wait_for(lambda: cls.pg.scalar("SELECT count(*) FROM mta.acct WHERE type = 't' "
                                       "AND attempt >= 2") >= LATER,
                 timeout=30, what="deferrals")
        cls.sink.set_rule("rcpt:later*@*", "250 2.1.5 ok")
        wait_for(lambda: cls.pg.scalar("SELECT count(*) FROM mta.recipients "
                                       "WHERE pipe = 'transactional'") == 0,
                 timeout=30, what="the transactional mail to be final")
        cls.wd = WebDriver(width=1300, height=1000)

    @classmethod
    def tearDownClass(cls):
        cls.wd.quit()
        stop_node(cls.node)
        cls.sink.stop()
        cls.dns.stop()
        cls.pg.stop()

    def counts(self):
        return dict(self.pg.query("SELECT type, count(*) FROM mta.acct GROUP BY 1"))

    def shown(self, ids):
        return self.wd.run("return arguments[0].map((i) => "
                           "document.getElementById(i).textContent)", ids)

    def table(self, id):
        return self.wd.run("return Array.from(document.querySelectorAll("
                           "'#' + arguments[0] + ' tbody tr'), (r) => "
                           "Array.from(r.cells, (c) => c.textContent))", id)

    def test_page_matches_sql_and_charts_are_drawn(self):
        c = self.counts()
        # (the sender gets its delivery status notifications delivered too)
        self.assertGreaterEqual(c["d"], DELIVERED + LATER, c)
        self.assertEqual(c["b"], UNKNOWN + SPAM, c)
        self.assertGreaterEqual(c["t"], 2 * LATER)
        self.wd.get("http://127.0.0.1:%d/#token=%s" % (self.port, TOKEN))
        want = [str(c["d"]), str(c["b"]), str(c["t"])]
        ids = ["sum-delivered", "sum-bounced", "sum-deferred"]
        try:
            wait_for(lambda: self.shown(ids) == want, timeout=20,
                     what="the chart's totals %s" % want)
        except AssertionError:
            print(self.shown(ids), self.wd.run("return document.body.innerText"))
            raise

        # bounce categories: the bars' labels and values as SQL groups them
        cats = self.pg.query("SELECT bounce_cat, count(*) FROM mta.acct WHERE type = 'b' "
                             "GROUP BY 1 ORDER BY 2 DESC, 1")
        self.assertEqual(len(cats), 2, cats)
        bars = self.wd.run("return Array.from(document.querySelectorAll('#bounces g.bar'), "
                           "(g) => [g.querySelector('text').textContent, "
                           "Number(g.querySelector('text.v').textContent), "
                           "g.querySelector('rect').getBBox().width])")
        self.assertEqual([b[:2] for b in bars], [list(r) for r in cats])
        self.assertGreater(bars[0][2], bars[1][2])

        # the top queue by backlog, paused and shown so
        top = self.pg.query("SELECT domain, queued, paused FROM mta.queues "
                            "ORDER BY queued DESC, domain LIMIT 2")
        self.assertEqual(top, [("big.test", 7, True), ("small.test", 2, False)])
        rows = self.table("top-backlog")
        self.assertEqual([(r[0], r[1], r[3], r[5]) for r in rows],
                         [("big.test (bulk)", "7", "paused", "Resume"),
                          ("small.test (bulk)", "2", "", "Pause")])
        # its button resumes it, and the page shows it at once
        paused = "SELECT paused FROM mta.queues WHERE domain = 'big.test'"
        for label, state in (("Resume", False), ("Pause", True)):
            self.wd.click(self.wd.find("//table[@id='top-backlog']//tr[td[1]='big.test (bulk)']"
                                       "//button[text()='%s']" % label))
            wait_for(lambda: self.pg.scalar(paused) is state, timeout=10,
                     what="big.test paused=%s" % state)
            wait_for(lambda: self.table("top-backlog")[0][3] == ("paused" if state else ""),
                     timeout=10, what="the row of big.test shown paused=%s" % state)

        # deferral rate of c1.test (the 451s), and the node's throughput
        d1, b1, t1 = self.pg.query("SELECT count(*) FILTER (WHERE type = 'd'), "
                                   "count(*) FILTER (WHERE type = 'b'), "
                                   "count(*) FILTER (WHERE type = 't') FROM mta.acct "
                                   "WHERE queue = 'c1.test'")[0]
        rows = self.table("top-deferral")
        self.assertEqual(rows[0][:4], ["c1.test", str(d1 + b1 + t1), str(t1),
                                       "%.1f%%" % (100.0 * t1 / (d1 + b1 + t1))])
        rows = self.table("node-throughput")
        self.assertEqual(rows[0][:4], ["node-a", str(c["d"]), str(c["b"]), str(c["t"])])

        # the warm-up plans as mta.warmup_status has them
        plans = self.pg.query("SELECT ip, key, day::text, state, sent_today || ' / ' ||"
                              " daily_limit, sent_this_hour || ' / ' || hourly_limit,"
                              " coalesce(reason, '') FROM mta.warmup_status ORDER BY ip, key")
        self.assertEqual(len(plans), 2)
        self.assertEqual(plans[1][3], "paused")
        self.assertEqual([tuple(r) for r in self.table("warmup")], plans)

        # the chart over the last hour (the window chosen in the page): three
        # series, the delivered one filled below, all as long as the chart
        self.wd.run("const s = document.getElementById('hours'); s.value = '1';"
                    "s.dispatchEvent(new Event('change'))")
        wait_for(lambda: self.wd.run("return document.querySelector('#traffic path.line')"
                                     ".getAttribute('d').split('L').length") == 60,
                 timeout=10, what="the chart of the last hour")
        self.assertEqual(self.shown(ids), want)
        paths = self.wd.run("return Array.from(document.querySelectorAll('#traffic path'), "
                            "(p) => [p.getAttribute('class'), p.dataset.series, "
                            "p.getTotalLength()])")
        kinds = {(k, s) for k, s, _ in paths}
        self.assertEqual(kinds, {("area", "delivered"), ("line", "delivered"),
                                 ("line", "bounced"), ("line", "deferred")})
        # (lengths in the SVG's own units: at least 80 % of its width)
        width = self.wd.run("return document.getElementById('traffic').viewBox.baseVal.width")
        for k, s, length in paths:
            self.assertGreater(length, 0.8 * width, (k, s))

        # the screenshots: the colours of the series are on the pixels
        if os.environ.get("PGMTA_DASHBOARD_PNG"):  # to look at it
            with open(os.environ["PGMTA_DASHBOARD_PNG"], "wb") as f:
                f.write(self.wd.screenshot())
        img = decode_png(self.wd.screenshot(self.wd.find("//*[@id='traffic']")))
        self.assertGreater(img.width, 600)
        colours = img.colours(0, 0, img.width, img.height)
        self.assertGreater(len(colours), 20, "the chart looks empty")
        for series, rgb in COLORS.items():
            n = sum(v for col, v in colours.items() if near(col, rgb))
            self.assertGreater(n, 20, "no %s line in the chart" % series)
        img = decode_png(self.wd.screenshot(self.wd.find("//*[@id='bounces']")))
        colours = img.colours(0, 0, img.width, img.height)
        red = sum(v for col, v in colours.items() if near(col, COLORS["bounced"], 8))
        self.assertGreater(red, 500, "no bars in the bounce chart")

        # more data (ten more bounce categories, more deferring queues) and
        # a redraw move nothing on the page
        tops = "return ['queues', 'nodes', 'jobs'].map((i) => " \
               "document.getElementById(i).getBoundingClientRect().top + window.scrollY)"
        before = self.wd.run(tops)
        self.pg.query("INSERT INTO mta.acct (type, queue, node, bounce_cat) "
                      "SELECT t, 'q' || i || '.test', 'node-b/transactional/0', 'cat-' || i "
                      "FROM generate_series(1, 10) i, unnest(ARRAY['b', 't', 'b']) t")
        self.wd.run("return Promise.all([refresh(), refreshCharts()])")
        self.assertEqual(len(self.table("top-deferral")), 10)
        self.assertEqual(len(self.table("node-throughput")), 2)
        labels = self.wd.run("return Array.from(document.querySelectorAll('#bounces g.bar "
                             "text:not(.v)'), (t) => t.textContent)")
        self.assertEqual(len(labels), 8)
        self.assertEqual(labels[-1], "(5 more)")
        self.assertEqual(self.wd.run(tops), before)
        self.assertTrue(self.node.proc.alive())



if __name__ == "__main__":
    main()
