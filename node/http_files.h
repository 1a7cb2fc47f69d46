/* http_files: the dashboard's static files (GET /, /NAME.{html,js,css,svg,
 * png,ico}), read from one directory without a database and without a
 * token: the page asks for the token and sends it with its API calls. */
#ifndef PGMTA_HTTP_FILES_H
#define PGMTA_HTTP_FILES_H

#include <stdbool.h>

#include <event2/http.h>

/* Longest file name served; larger files than HTTP_FILES_MAX_SIZE: 404. */
#define HTTP_FILES_MAX_NAME 128
#define HTTP_FILES_MAX_SIZE (4 * 1024 * 1024)

/* Answers REQ for PATH (the request's path, starting with '/') from DIR
 * (NULL: 404): 200 with the file, 404, or 405 for a method other than GET
 * and HEAD. */
/* Whether NAME (a request path without its leading '/') is a name served
 * from the directory: letters, digits, '.', '_', '-', not starting with '.',
 * no "..", at most HTTP_FILES_MAX_NAME characters. Pure. */
bool http_files_valid_name(const char *name);
void http_files_serve(const char *dir, struct evhttp_request *req, const char *path);
/* The directory used without http.dashboard-dir: ../share/pgmta/dashboard
 * beside the running binary when it holds index.html (an installed
 * pgmtad), else the source tree's admin/dashboard when it exists, else the
 * configured <datadir>/pgmta/dashboard. Heap string, the caller frees it. */
char *http_files_default_dir(void);

#endif
