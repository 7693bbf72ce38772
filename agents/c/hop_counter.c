/*
 * A mobile agent in C, freestanding: the C twin of agents/hop-counter. Its state lives in
 * statics (counters) and on the heap (its route, and the host names it records), which the host
 * snapshots after each entry and restores on the next host; nothing is serialized by hand.
 *
 *   input:  {"hosts": [address...]}, the stops in order (they may repeat)
 *   result: {"arrivals": n, "hosts": [name...], "hops": {hop: arrivals so far...},
 *            "checksum": c, "departures": d}
 *
 * which is the Rust agent's result plus `departures`, counted by roam_agent_depart. `c` is the
 * same FNV-1a checksum (see agents/hop-counter): of `arrivals` as a little-endian u64, then of
 * each host name's length (u64) and bytes, then of each hop (u32) and its count (u64).
 * Recalled, the agent hands over the same report as its partial result.
 */
#include "roam.h"

/* One arrival, in a list on the heap in the order of arrival (so by ascending hop). */
typedef struct visit {
    struct visit *next;
    roam_str host;
    uint32_t hop;
    uint64_t arrivals; /* `arrivals` just after this one */
} visit;

/* The agent's state: statics, so in the module's memory, so carried from host to host. */
static uint64_t arrivals;
static uint64_t departures;
static roam_str *route; /* the stops, pointing into the launch input, kept on the heap */
static size_t route_len, route_next;
static visit *first_visit, *last_visit;

/* FNV-1a, 64 bits, over `len` bytes. */
static uint64_t fnv1a(uint64_t hash, const void *bytes, size_t len) {
    const uint8_t *b = bytes;
    for (size_t i = 0; i < len; i++) hash = (hash ^ b[i]) * 0x100000001b3u;
    return hash;
}

/* An integer's `width` bytes, little-endian, into the hash. */
static uint64_t fnv1a_le(uint64_t hash, uint64_t value, size_t width) {
    uint8_t bytes[8];
    for (size_t i = 0; i < width; i++, value >>= 8) bytes[i] = (uint8_t)value;
    return fnv1a(hash, bytes, width);
}

static uint64_t checksum(void) {
    uint64_t hash = fnv1a_le(0xcbf29ce484222325u, arrivals, 8);
    for (const visit *v = first_visit; v; v = v->next) {
        hash = fnv1a_le(hash, v->host.len, 8);
        hash = fnv1a(hash, v->host.ptr, v->host.len);
    }
    for (const visit *v = first_visit; v; v = v->next) {
        hash = fnv1a_le(hash, v->hop, 4);
        hash = fnv1a_le(hash, v->arrivals, 8);
    }
    return hash;
}

/* The report, as CBOR. */
static void report(roam_buf *out) {
    roam_put_map(out, 5);
    roam_put_str(out, "arrivals");
    roam_put_uint(out, arrivals);
    roam_put_str(out, "hosts");
    roam_put_array(out, arrivals);
    for (const visit *v = first_visit; v; v = v->next) roam_put_text(out, v->host.ptr, v->host.len);
    /* Integer keys, as Rust's BTreeMap<u32, u64> writes them. */
    roam_put_str(out, "hops");
    roam_put_map(out, arrivals);
    for (const visit *v = first_visit; v; v = v->next) {
        roam_put_uint(out, v->hop);
        roam_put_uint(out, v->arrivals);
    }
    roam_put_str(out, "checksum");
    roam_put_uint(out, checksum());
    roam_put_str(out, "departures");
    roam_put_uint(out, departures);
}

/* Goes to the next stop, or ends with the report: home after a visit, or right here when the
 * route is empty from the start (the agent is home already). */
static void next(bool at_start) {
    roam_buf decision = {0};
    if (route_next < route_len) {
        roam_next_go(&decision, route[route_next++], NULL, 0);
    } else {
        roam_buf result = {0};
        report(&result);
        if (at_start) roam_next_finish(&decision, &result);
        else roam_next_home(&decision, &result);
    }
    roam_ok(&decision);
}

/* No resources to declare. */
ROAM_EXPORT(ROAM_AGENT_MANIFEST) void manifest(void) {
    roam_buf out = {0};
    roam_manifest(&out, 0);
    roam_ok(&out);
}

ROAM_EXPORT(ROAM_AGENT_START) void start(void) {
    /* The launch input stays on the heap for the whole journey: the route points into it. */
    roam_reader in = roam_input();
    roam_reader hosts;
    uint64_t left;
    if (!roam_find(in, "hosts", &hosts) || !roam_get_array(&hosts, &left) || left == ROAM_INDEFINITE ||
        left > (uint64_t)(hosts.end - hosts.at)) {
        roam_fail("invalid input: expected {\"hosts\": [address...]}");
        return;
    }
    route = roam_alloc((left ? left : 1) * sizeof *route);
    if (!route) {
        roam_fail("out of memory");
        return;
    }
    while (roam_next(&hosts, &left)) roam_get_text(&hosts, &route[route_len++]);
    if (hosts.failed) {
        roam_fail("invalid input: every host must be a string");
        return;
    }
    next(true);
}

ROAM_EXPORT(ROAM_AGENT_ARRIVE) void arrive(void) {
    /* The arrival is scratch: only the host's name is kept, moved down to where the input
     * started, so the heap grows by a name and a visit per hop, not by a whole arrival. */
    uintptr_t mark = roam_heap_mark();
    roam_reader in = roam_input();
    roam_arrival here;
    if (!roam_get_arrival(&in, &here)) {
        roam_fail("the host sent an arrival that does not decode");
        return;
    }
    char *name = roam_heap_keep(mark, here.host.ptr, here.host.len);
    visit *v = roam_alloc(sizeof *v);
    if (!name || !v) {
        roam_fail("out of memory");
        return;
    }
    arrivals++;
    v->next = NULL;
    v->host.ptr = name;
    v->host.len = here.host.len;
    v->hop = here.hop;
    v->arrivals = arrivals;
    if (last_visit) last_visit->next = v;
    else first_visit = v;
    last_visit = v;
    next(false);
}

/* Runs after start or arrive chose Go or Home, in the same instance: its count is in the next
 * snapshot, so the report made on the next host includes it. */
ROAM_EXPORT(ROAM_AGENT_DEPART) void depart(void) { departures++; }

ROAM_EXPORT(ROAM_AGENT_RECALL) void recall(void) {
    roam_buf out = {0};
    report(&out);
    roam_ok(&out);
}
