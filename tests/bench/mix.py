"""The benchmark's message mix, shared by tests/bench/run and
tests/bench/enqueue: 1 KB and 10 KB bodies (half each) of random words, one
recipient per message, spread evenly over the bench domains, each message with
its own Message-ID and body (personalised content, which PostgreSQL
compresses as it does real text)."""
import csv
import io
import random

SIZES = (1024, 10240)
LINE_LEN = 78


def _text_lines(count=4096, seed=1):
    """Lines of LINE_LEN octets (CRLF included) of words from a vocabulary."""
    rnd = random.Random(seed)
    letters = "etaoinshrdlucmfwypvbgkjqxz"
    vocab = ["".join(rnd.choices(letters, weights=range(26, 0, -1), k=rnd.randint(2, 9)))
             for _ in range(2000)]
    lines = []
    for _ in range(count):
        words = []
        while sum(len(w) + 1 for w in words) < LINE_LEN - 2:
            words.append(rnd.choice(vocab))
        lines.append(" ".join(words)[:LINE_LEN - 2].ljust(LINE_LEN - 2) + "\r\n")
    return lines


LINES = _text_lines()
SENDER = "sender@bench.example"


# ---------------------------------------------------------------- the mix

class Mix:
    """N messages over D domains: domain i gets N/D messages (the remainder
    to the first ones), bodies of 1 KB on even and 10 KB on odd domains, so
    that half the messages are of each size whichever generator sends them."""

    def __init__(self, n, domains):
        self.n = n
        self.domains = ["d%02d.bench.test" % i for i in range(domains)]

    def size_of(self, i):
        return SIZES[i % 2]

    def groups(self):
        """[(domain, size, count)] for smtp-source."""
        base, extra = divmod(self.n, len(self.domains))
        return [(d, self.size_of(i), base + (1 if i < extra else 0))
                for i, d in enumerate(self.domains)]

    def rows(self, start, count, job):
        """COPY rows for messages start..start+count-1: personalised content
        (each message its own Message-ID and body) of the group's size. The
        body is lines of words drawn at random, so it compresses about as
        well as real text does (PostgreSQL compresses stored content)."""
        out = []
        nd = len(self.domains)
        rnd = random.Random(start)
        for n in range(start, start + count):
            i = n % nd
            rcpt = "user%d@%s" % (n, self.domains[i])
            head = ("From: <%s>\r\nTo: <%s>\r\nSubject: bench %d\r\n"
                    "Message-ID: <%s.%d@bench.example>\r\n\r\n" % (SENDER, rcpt, n, job, n))
            size = self.size_of(i)
            body = "".join(rnd.choices(LINES, k=size // LINE_LEN))
            body += "x" * (size - len(body) - 2) + "\r\n"
            out.append((SENDER, rcpt, head + body, job))
        return out

    def sized_bytes(self):
        return sum(size * count for _, size, count in self.groups())


def csv_bytes(rows):
    """rows as the CSV a bulk loader sends (a file it has ready)."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return io.BytesIO(buf.getvalue().encode())


def copy_csv(conn, data):
    """One COPY mta.submit of prepared CSV (csv_bytes), committed."""
    with conn.cursor() as cur:
        cur.execute("SET work_mem = '256MB'")
        cur.copy_expert("COPY mta.submit (mail_from, rcpt_to, content, job_id) "
                        "FROM STDIN WITH (FORMAT csv)", data, size=1 << 20)
    conn.commit()


def copy_rows(conn, rows):
    copy_csv(conn, csv_bytes(rows))
