/*
 * A query module in C, freestanding: the C twin of agents/sales-by-region. It filters the
 * host's `sales` table and totals it by region next to the data, so that only the totals travel
 * back. Its input and its answer are the Rust module's, so the two can be checked against each
 * other (tests/all/guests.rs):
 *
 *   input:  {"min_quantity": 1, "from_day": 1, "to_day": 365}, every field optional
 *   answer: {"regions": [{"region": R, "orders": N, "total_cents": T, "mean_cents": T / N}...]}
 *           sorted by region name (byte order, as Rust's BTreeMap sorts them)
 *
 * After `cargo xtask agents` and `cargo xtask demo`, sign it and run it with
 *   roam sign agents/target/c/sales_by_region.wasm --kind query --name sales-by-region-c \
 *       --version 1.0.0 --cap table:sales --key KEY -o sbr.signed.wasm
 *   roam eval sbr.signed.wasm --host 127.0.0.1:7700 --input '{"min_quantity": 2}'
 */
#include "roam.h"

/* One region's totals. Its name is copied out of the batch, whose buffer the next batch reuses. */
typedef struct region {
    roam_str name;
    uint64_t orders;
    int64_t total_cents;
} region;

/* The regions seen so far, kept sorted by name: few distinct regions, many rows. */
static region *regions;
static size_t region_count, region_cap;

/* The region called `name`, added in its place if it is new; NULL if memory ran out. */
static region *region_named(roam_str name) {
    size_t at = 0;
    while (at < region_count) {
        int c = roam_str_cmp(regions[at].name, name);
        if (c == 0) return &regions[at];
        if (c > 0) break;
        at++;
    }
    if (region_count == region_cap) {
        size_t cap = region_cap ? region_cap * 2 : 8;
        region *grown = roam_realloc(regions, region_cap * sizeof *regions, cap * sizeof *regions);
        if (!grown) return NULL;
        regions = grown;
        region_cap = cap;
    }
    char *copy = roam_alloc(name.len ? name.len : 1);
    if (!copy) return NULL;
    __builtin_memcpy(copy, name.ptr, name.len);
    __builtin_memmove(&regions[at + 1], &regions[at], (region_count - at) * sizeof *regions);
    region fresh = {{copy, name.len}, 0, 0};
    regions[at] = fresh;
    region_count++;
    return &regions[at];
}

/* Reads the input map into the three bounds; false (after failing the call) if it does not fit. */
static bool read_input(uint64_t *min_quantity, uint64_t *from_day, uint64_t *to_day) {
    roam_reader in = roam_input();
    uint64_t left;
    roam_str key;
    if (!roam_get_map(&in, &left)) {
        roam_fail("invalid input: expected a map such as {\"min_quantity\": 2}");
        return false;
    }
    while (roam_next(&in, &left)) {
        uint64_t *field = NULL;
        roam_get_text(&in, &key);
        if (roam_str_eq(key, "min_quantity")) field = min_quantity;
        else if (roam_str_eq(key, "from_day")) field = from_day;
        else if (roam_str_eq(key, "to_day")) field = to_day;
        if (!field || !roam_get_uint(&in, field) || *field > UINT32_MAX) {
            roam_buf m = {0};
            roam_buf_text(&m, "invalid input: ");
            if (in.failed) {
                roam_buf_text(&m, "expected text keys and whole numbers from 0 to 4294967295");
            } else {
                roam_buf_text(&m, "unknown field `");
                roam_buf_append(&m, key.ptr, key.len);
                roam_buf_text(&m, "`, expected one of `min_quantity`, `from_day`, `to_day`");
            }
            roam_fail_text((const char *)m.data, m.len);
            return false;
        }
    }
    if (in.failed) {
        roam_fail("invalid input: the map does not decode");
        return false;
    }
    return true;
}

ROAM_EXPORT(ROAM_QUERY_EXPORT) void sales_by_region(void) {
    uint64_t min_quantity = 1, from_day = 1, to_day = 365;
    if (!read_input(&min_quantity, &from_day, &to_day)) return;

    int64_t sales = roam_open("sales");
    if (sales < 0) {
        roam_fail_call("cannot open the sales table", sales);
        return;
    }
    /* ?1, ?2, ?3: a CBOR array of the three bounds. */
    roam_buf params = {0};
    roam_put_array(&params, 3);
    roam_put_uint(&params, min_quantity);
    roam_put_uint(&params, from_day);
    roam_put_uint(&params, to_day);
    roam_rows rows;
    int64_t status = roam_query((uint32_t)sales,
                                "SELECT region, amount_cents FROM sales WHERE quantity >= ?1 AND day BETWEEN ?2 AND ?3",
                                &params, &rows);
    if (status < 0) {
        roam_fail_call("cannot query the sales table", status);
        return;
    }

    roam_reader row;
    uint64_t cells, matching = 0;
    int next;
    while ((next = roam_rows_next(&rows, &row, &cells)) > 0) {
        roam_str name;
        int64_t amount_cents;
        roam_get_text(&row, &name);
        roam_get_int(&row, &amount_cents);
        if (row.failed || cells != 2) {
            roam_fail("a row of sales is not (region TEXT, amount_cents INTEGER)");
            return;
        }
        region *r = region_named(name);
        if (!r) {
            roam_fail("out of memory");
            return;
        }
        r->orders++;
        r->total_cents += amount_cents;
        matching++;
    }
    if (next < 0) {
        roam_fail_call("cannot read the sales", next);
        return;
    }

    roam_buf line = {0};
    roam_buf_text(&line, "sales-by-region (C): ");
    roam_buf_int(&line, (int64_t)matching);
    roam_buf_text(&line, " matching sales");
    roam_log(ROAM_LOG_INFO, line.data, (uint32_t)line.len);

    roam_buf out = {0};
    roam_put_map(&out, 1);
    roam_put_str(&out, "regions");
    roam_put_array(&out, region_count);
    for (size_t i = 0; i < region_count; i++) {
        const region *r = &regions[i];
        roam_put_map(&out, 4);
        roam_put_str(&out, "region");
        roam_put_text(&out, r->name.ptr, r->name.len);
        roam_put_str(&out, "orders");
        roam_put_uint(&out, r->orders);
        roam_put_str(&out, "total_cents");
        roam_put_int(&out, r->total_cents);
        roam_put_str(&out, "mean_cents");
        roam_put_double(&out, (double)r->total_cents / (double)r->orders);
    }
    roam_ok(&out);
}
