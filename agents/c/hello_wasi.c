/*
 * A query module in C against wasi-libc, built as a reactor (no main; the host calls the
 * reactor's _initialize, then roam_query). It shows that a module may use its libc: printf goes
 * to the host's diagnostic log (WASI stdout), malloc to libc's heap (roam.h's roam_alloc is
 * malloc in a WASI build). It answers {"greeting": "hello, NAME", "letters": N} for the input
 * {"name": NAME} (default "world").
 *
 * Built, not yet run by the tests: it needs a host that offers WASI preview 1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "roam.h"

ROAM_EXPORT(ROAM_QUERY_EXPORT) void hello(void) {
    roam_reader in = roam_input();
    roam_reader value;
    roam_str name = roam_cstr("world");
    if (roam_find(in, "name", &value) && !roam_get_text(&value, &name)) {
        roam_fail("invalid input: `name` must be a string");
        return;
    }

    /* "hello, " + the name + NUL, in a block of libc's heap. */
    size_t size = 7 + name.len + 1;
    char *greeting = malloc(size);
    if (!greeting) {
        roam_fail("out of memory");
        return;
    }
    snprintf(greeting, size, "hello, %.*s", (int)name.len, name.ptr);
    printf("hello_wasi: %s (%zu bytes)\n", greeting, strlen(greeting));
    /* A reactor never exits, so nothing flushes stdout at the end: flush it here. */
    fflush(stdout);

    roam_buf out = {0};
    roam_put_map(&out, 2);
    roam_put_str(&out, "greeting");
    roam_put_str(&out, greeting);
    roam_put_str(&out, "letters");
    roam_put_uint(&out, name.len);
    free(greeting);
    roam_ok(&out);
}
