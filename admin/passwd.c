/* passwd: "pgmta passwd" reads a password from standard input (without echo
 * when it is a terminal) and prints its crypt(3) hash, yescrypt ($y$) or
 * with --sha512 SHA-512-crypt ($6$), for smtp-listener.users[].password
 * (see README, Security). The password is wiped from memory after use. */
#include "admin.h"

#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <openssl/crypto.h>

static const char passwd_usage[] = "usage: pgmta passwd [--sha512]\n"
                                   "reads a password on standard input (one line, not echoed on\n"
                                   "a terminal) and prints its crypt(3) hash: yescrypt, or\n"
                                   "SHA-512-crypt with --sha512\n";

/* One line from stdin into buf, without its line end; -1 on EOF before
 * anything or a line too long. */
static int
read_password(char *buf, size_t cap)
{
    bool tty = isatty(STDIN_FILENO);
    struct termios old, quiet;
    if (tty && tcgetattr(STDIN_FILENO, &old) == 0) {
        quiet = old;
        quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHONL);
        fputs("Password: ", stderr);
        fflush(stderr);
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet);
    } else {
        tty = false;
    }
    int rc = fgets(buf, (int)cap, stdin) ? 0 : -1;
    if (tty) {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
        fputc('\n', stderr);
    }
    if (rc != 0)
        return -1;
    size_t n = strlen(buf);
    if (n && buf[n - 1] == '\n')
        buf[--n] = '\0';
    else if (n == cap - 1)
        return -1;
    if (n && buf[n - 1] == '\r')
        buf[--n] = '\0';
    return 0;
}

int
admin_cmd_passwd(int argc, char **argv)
{
    const char *prefix = "$y$";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--sha512")) {
            prefix = "$6$";
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(passwd_usage, stdout);
            return ADMIN_EXIT_OK;
        } else {
            fputs(passwd_usage, stderr);
            return ADMIN_EXIT_USAGE;
        }
    }
    char pw[1024];
    if (read_password(pw, sizeof pw) != 0) {
        OPENSSL_cleanse(pw, sizeof pw);
        admin_err("passwd: no password read (one line, at most %zu bytes)", sizeof pw - 2);
        return ADMIN_EXIT_ERROR;
    }
    if (!pw[0]) {
        admin_err("passwd: empty password");
        return ADMIN_EXIT_ERROR;
    }
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    struct crypt_data *cd = calloc(1, sizeof *cd);
    const char *h = NULL;
    if (cd && crypt_gensalt_rn(prefix, 0, NULL, 0, salt, (int)sizeof salt))
        h = crypt_rn(pw, salt, cd, (int)sizeof *cd);
    OPENSSL_cleanse(pw, sizeof pw);
    int rc = ADMIN_EXIT_OK;
    if (!h || h[0] == '*') {
        admin_err("passwd: crypt(3) failed");
        rc = ADMIN_EXIT_ERROR;
    } else {
        printf("%s\n", h);
    }
    if (cd)
        OPENSSL_cleanse(cd, sizeof *cd);
    free(cd);
    return rc;
}
