/* addr_probe: runs addr_validate over addresses read from stdin, one per
 * line, hex-encoded (so that CR, LF and any other octet can be tested), and
 * prints one line per address: "ok" or "bad REASON". For the integration
 * test that holds the C validator to the decisions of
 * sql/010_validate.sql. Exit status 0, 2 on a malformed input line. */
#include "addr.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int
hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int
main(void)
{
    static char line[8192];
    static char addr[4096];
    while (fgets(line, sizeof line, stdin)) {
        size_t n = strcspn(line, "\r\n");
        if (n % 2 || n / 2 > sizeof addr)
            return 2;
        for (size_t i = 0; i < n; i += 2) {
            int hi = hexval(line[i]), lo = hexval(line[i + 1]);
            if (hi < 0 || lo < 0)
                return 2;
            addr[i / 2] = (char)(hi * 16 + lo);
        }
        const char *why = NULL;
        if (addr_validate(addr, n / 2, NULL, &why))
            printf("ok\n");
        else
            printf("bad %s\n", why);
    }
    return 0;
}
