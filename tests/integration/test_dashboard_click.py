"""The dashboard's Pause and Resume buttons, clicked in a real headless
Chromium driven by ChromeDriver (tests/lib/webdriver.py), against a real
pgmtad and a real PostgreSQL.

One domain has two queues: one without a virtual MTA and one with vmta-a.
Pause on the row without a vmta must pause exactly that queue (not every
queue of the domain), the page must show it paused after a reload, and
Resume must undo it; the same the other way round for the vmta-a row.
What the buttons did is read back with SQL, not from the page.

As in test_http_api, the node runs only the "transactional" pipe and the
mail sits in "bulk", so nothing is delivered while the test looks.
"""
import time
import unittest

from pgmta_test import PgServer, free_port, main, wait_for
from test_http_api import TOKEN, start_node, stop_node
from webdriver import WebDriver, WebDriverError

DOMAIN = "click.test"
# vmta:paused for every queue of the domain, e.g. ":true,vmta-a:false"
PAUSED = ("SELECT string_agg(vmta || ':' || paused, ',' ORDER BY vmta) "
          "FROM mta.queue WHERE domain = '%s'" % DOMAIN)


def row_xpath(vmta):
    return ("//table[@id='queues']/tbody/tr[td[1]='%s' and td[2]='%s' and td[3]='bulk']"
            % (DOMAIN, vmta))


class DashboardClickTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.pg = PgServer()
        cls.port = free_port()
        cls.node, cls.client = start_node(cls.pg, cls.port)
        for vmta in (None, "vmta-a"):
            cls.pg.query("SELECT mta.enqueue('s@sender.test', ARRAY['a@%s', 'b@%s'], "
                         "E'Subject: t\\r\\n\\r\\nhi\\r\\n', NULL, %%s, 'bulk')"
                         % (DOMAIN, DOMAIN), (vmta,))
        cls.wd = WebDriver()

    @classmethod
    def tearDownClass(cls):
        cls.wd.quit()
        stop_node(cls.node)
        cls.pg.stop()

    def page_row(self, vmta):
        """(paused cell, button label, row class) of a queue's row as shown."""
        return self.wd.run(
            "const r = document.evaluate(arguments[0], document, null,"
            " XPathResult.FIRST_ORDERED_NODE_TYPE, null).singleNodeValue;"
            "if (!r) return null;"
            "return [r.cells[8].textContent, r.querySelector('button').textContent,"
            " r.className];", row_xpath(vmta))

    def wait_row(self, vmta, paused):
        want = ["yes", "Resume", "paused"] if paused else ["", "Pause", ""]
        try:
            wait_for(lambda: self.page_row(vmta) == want, timeout=15,
                     what="the row of %s/%s shown %s" % (DOMAIN, vmta or "(none)", want))
        except AssertionError:
            print(self.page_row(vmta), self.wd.run("return document.body.innerText"))
            raise

    def click_button(self, vmta, label):
        """Clicks the button of a queue's row. The page redraws its tables
        every 2 s, so an element found may be replaced before the click
        lands: find it again then."""
        deadline = time.monotonic() + 15
        while True:
            b = self.wd.find(row_xpath(vmta) + "//button[text()='%s']" % label)
            try:
                if b is not None:
                    self.wd.click(b)
                    return
            except WebDriverError as e:
                if e.error != "stale element reference":
                    raise
            self.assertLess(time.monotonic(), deadline, "no %s button on %s/%s"
                            % (label, DOMAIN, vmta))
            time.sleep(0.1)

    def settle(self, expect):
        """Waits for the SQL state, then makes sure it stays so (a wrong
        second request would show within the page's refresh)."""
        wait_for(lambda: self.pg.scalar(PAUSED) == expect, timeout=15,
                 what="queues of %s to be %s (now %s)" % (DOMAIN, expect,
                                                          self.pg.scalar(PAUSED)))
        time.sleep(0.5)
        self.assertEqual(self.pg.scalar(PAUSED), expect)

    def test_pause_resume_by_click(self):
        self.assertEqual(self.pg.scalar(PAUSED), ":false,vmta-a:false")
        self.wd.get("http://127.0.0.1:%d/#token=%s" % (self.port, TOKEN))
        self.wait_row("", False)
        self.wait_row("vmta-a", False)

        # Pause on the queue without a vmta: that queue only
        self.click_button("", "Pause")
        self.settle(":true,vmta-a:false")
        self.wait_row("", True)
        self.wait_row("vmta-a", False)
        self.assertEqual(self.pg.scalar(PAUSED), ":true,vmta-a:false")

        # a reload shows the paused state (the token stays in the tab)
        self.wd.refresh()
        self.wait_row("", True)
        self.wait_row("vmta-a", False)
        self.assertIsNone(self.wd.find("//form[@id='login' and not(@hidden)]"))

        # Resume: both running again
        self.click_button("", "Resume")
        self.settle(":false,vmta-a:false")
        self.wait_row("", False)
        self.wait_row("vmta-a", False)

        # and the other way round: the vmta-a row leaves the other queue alone
        self.click_button("vmta-a", "Pause")
        self.settle(":false,vmta-a:true")
        self.wd.refresh()
        self.wait_row("vmta-a", True)
        self.wait_row("", False)
        self.click_button("vmta-a", "Resume")
        self.settle(":false,vmta-a:false")
        self.wait_row("vmta-a", False)


if __name__ == "__main__":
    main()
