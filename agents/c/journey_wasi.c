/*
 * A mobile agent in C against wasi-libc, built as a reactor: the ordinary libc a C programmer
 * knows travels with it. Its constructor runs once, when the agent starts at home (the host
 * calls the reactor's _initialize then), never again on arrival, since the agent's memory,
 * libc's heap and stdio buffers included, already holds what it did.
 *
 *   input:  {"hosts": [address...]}
 *   result: {"constructed": times the constructor ran, "arrivals": n, "seen": "name,name,..."}
 *
 * Each arrival is printed (to the host's log) and appended, with realloc, to a string on
 * libc's heap.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "roam.h"

/* How often the constructor ran in this agent's memory: 1 for a whole journey. */
static unsigned constructed;
__attribute__((constructor)) static void construct(void) { constructed++; }

static roam_str *route; /* the stops, pointing into the launch input, kept on the heap */
static size_t route_len, route_next;
static unsigned arrivals;
static char *seen; /* the hosts' names, comma-separated, on libc's heap */

static void go_on(bool at_start) {
    roam_buf decision = {0};
    if (route_next < route_len) {
        roam_next_go(&decision, route[route_next++], NULL, 0);
    } else {
        roam_buf result = {0};
        roam_put_map(&result, 3);
        roam_put_str(&result, "constructed");
        roam_put_uint(&result, constructed);
        roam_put_str(&result, "arrivals");
        roam_put_uint(&result, arrivals);
        roam_put_str(&result, "seen");
        roam_put_str(&result, seen ? seen : "");
        if (at_start) roam_next_finish(&decision, &result);
        else roam_next_home(&decision, &result);
    }
    roam_ok(&decision);
}

ROAM_EXPORT(ROAM_AGENT_MANIFEST) void manifest(void) {
    roam_buf out = {0};
    roam_manifest(&out, 0);
    roam_ok(&out);
}

ROAM_EXPORT(ROAM_AGENT_START) void start(void) {
    roam_reader in = roam_input();
    roam_reader hosts;
    uint64_t left;
    if (!roam_find(in, "hosts", &hosts) || !roam_get_array(&hosts, &left) || left == ROAM_INDEFINITE ||
        left > (uint64_t)(hosts.end - hosts.at)) {
        roam_fail("invalid input: expected {\"hosts\": [address...]}");
        return;
    }
    route = malloc((left ? left : 1) * sizeof *route);
    if (!route) {
        roam_fail("out of memory");
        return;
    }
    while (roam_next(&hosts, &left)) roam_get_text(&hosts, &route[route_len++]);
    printf("journey_wasi: starting for %zu hosts\n", route_len);
    fflush(stdout);
    go_on(true);
}

ROAM_EXPORT(ROAM_AGENT_ARRIVE) void arrive(void) {
    roam_reader in = roam_input();
    roam_arrival here;
    if (!roam_get_arrival(&in, &here)) {
        roam_fail("the host sent an arrival that does not decode");
        return;
    }
    size_t had = seen ? strlen(seen) : 0;
    char *grown = realloc(seen, had + 1 + here.host.len + 1);
    if (!grown) {
        roam_fail("out of memory");
        return;
    }
    seen = grown;
    snprintf(seen + had, 1 + here.host.len + 1, "%s%.*s", had ? "," : "", (int)here.host.len, here.host.ptr);
    arrivals++;
    printf("journey_wasi: arrived at %.*s, hop %u\n", (int)here.host.len, here.host.ptr, (unsigned)here.hop);
    fflush(stdout);
    go_on(false);
}
