/*
 * roam.h: the roam guest ABI for C, in one header with no library behind it.
 *
 * A roam module is a core WebAssembly module that imports the functions below from the import
 * module "roam", exports its linear memory as "memory" and exports entry points of type
 * `void (void)`. Data crosses the boundary as CBOR in buffers the guest owns: the host never
 * allocates in the guest, it only reads and writes memory whose address the guest passes.
 *
 * Build freestanding (no libc; the header brings memcpy and friends and a bump allocator):
 *
 *     clang --target=wasm32 -ffreestanding -nostdlib -O2 -I sdk/c -Wl,--no-entry \
 *         -o x.wasm x.c $(clang --target=wasm32-wasi -print-libgcc-file-name)
 *
 * or against wasi-libc, as a reactor (then roam_alloc is malloc), once the host offers WASI:
 *
 *     clang --target=wasm32-wasi -mexec-model=reactor -O2 -I sdk/c -o x.wasm x.c
 *
 * `cargo xtask agents` builds agents/c/ with the exact flags (xtask/src/guests.rs says why each).
 *
 * Only <stdint.h>, <stddef.h> and <stdbool.h> are used, which clang provides itself. Every
 * function is `static inline`, so including the header is all it takes; the few definitions
 * that must be shared (the heap's top, memcpy...) are weak, so several files may include it.
 *
 * Everything here is one call's business unless it says otherwise: each entry call runs in a
 * fresh instance, except that an agent's memory and mutable globals (its statics, its heap and
 * the bump allocator's top among them) are carried from call to call and host to host.
 */
#ifndef ROAM_H
#define ROAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if !defined(__wasm32__)
#error "roam.h is for wasm32 guests: build with clang --target=wasm32 (or wasm32-wasi)"
#endif

#define ROAM_INLINE static inline
/* A function the host calls: exported by this name, whatever the C symbol is called. */
#define ROAM_EXPORT(name) __attribute__((export_name(name)))
#define ROAM_IMPORT(name) __attribute__((import_module("roam"), import_name(name)))

/* ---------------------------------------------------------------------------------------- */
/* Names and numbers of the ABI                                                               */
/* ---------------------------------------------------------------------------------------- */

/* Entry points. Each takes no parameters and returns nothing: it reads its input with
 * roam_input_len/roam_input_read and reports its outcome with roam_finish. */
#define ROAM_QUERY_EXPORT "roam_query"            /* query and code modules: once per call  */
#define ROAM_AGENT_MANIFEST "roam_agent_manifest" /* fresh instance, no input: a Manifest    */
#define ROAM_AGENT_START "roam_agent_start"       /* once, at home, hop 0: launch input      */
#define ROAM_AGENT_ARRIVE "roam_agent_arrive"     /* every later visit: an Arrival          */
#define ROAM_AGENT_DEPART "roam_agent_depart"     /* optional: after start/arrive chose Go
                                                     or Home, in the same instance           */
#define ROAM_AGENT_RECALL "roam_agent_recall"     /* optional: at home when recalled         */

/* roam_finish's status. */
#define ROAM_FINISH_OK 0  /* the bytes are the CBOR result                      */
#define ROAM_FINISH_ERR 1 /* the bytes are a UTF-8 message: the call failed     */

/* Why a host call failed. Functions returning int64_t return a value >= 0, or one of these
 * negated (-ROAM_E_...), and then roam_last_error_* explains it. */
#define ROAM_E_NOT_FOUND 1        /* no such resource, cursor or handle                   */
#define ROAM_E_DENIED 2           /* the signature's capabilities or the policy refuse it */
#define ROAM_E_WRONG_TYPE 3       /* e.g. a query on a log                                */
#define ROAM_E_INVALID_ARGUMENT 4 /* bad UTF-8, parameters that are not a CBOR array      */
#define ROAM_E_SQL 5              /* SQLite refused or failed the statement               */
#define ROAM_E_TOO_LARGE 6        /* a size limit: 16 open cursors, a log line > 4096 B   */
#define ROAM_E_UNAVAILABLE 7      /* exists but cannot be used here (an unbound resource) */
/* Not the host's: this header's own code for a batch of rows that does not decode. */
#define ROAM_E_MALFORMED 100

/* roam_log's levels (any other value counts as debug). */
#define ROAM_LOG_ERROR 0
#define ROAM_LOG_WARN 1
#define ROAM_LOG_INFO 2
#define ROAM_LOG_DEBUG 3

/* The most rows the host puts in one batch. */
#define ROAM_BATCH_MAX_ROWS 1024

/* ---------------------------------------------------------------------------------------- */
/* The imports                                                                                */
/* ---------------------------------------------------------------------------------------- */
/*
 * Pointers are offsets into this module's "memory"; every range the host reads or writes must
 * lie inside it (even with a length of 0) or the call traps. The host keeps no pointer after a
 * call returns. A trap ends the entry call with an error; error codes never trap.
 */

/* Length in bytes of this call's input (0 for the manifest and recall entries). */
ROAM_IMPORT("input_len") uint32_t roam_input_len(void);

/* Copies the whole input to `ptr`, which needs room for roam_input_len() bytes. May be called
 * again: the input is not consumed. */
ROAM_IMPORT("input_read") void roam_input_read(void *ptr);

/* Sets the call's outcome: status ROAM_FINISH_OK with the CBOR result, or ROAM_FINISH_ERR with
 * a UTF-8 message. Traps if `len` is over the host's result limit (8 MiB by default, for either
 * status), if an OK outcome was already set in this call, or if the status is neither. A second
 * call after an ERR outcome replaces it. Returning without any finish is an error. */
ROAM_IMPORT("finish") void roam_finish(uint32_t status, const void *ptr, uint32_t len);

/* Writes a UTF-8 message to the host's diagnostic log at `level`. No capability needed; each
 * message is cut to 4096 bytes and a call may log 64 KiB (each message counting at least 64),
 * after which messages are dropped silently. */
ROAM_IMPORT("log") void roam_log(uint32_t level, const void *ptr, uint32_t len);

/* Opens the resource named by the UTF-8 string at ptr..ptr+len. Returns a handle (>= 0, the
 * same one if it is opened again) or -ROAM_E_NOT_FOUND, -ROAM_E_DENIED (no `table:NAME` or
 * `log:NAME` capability), -ROAM_E_UNAVAILABLE (an agent's resource not bound on this host),
 * -ROAM_E_INVALID_ARGUMENT (not UTF-8). An agent can open only what its manifest declares. */
ROAM_IMPORT("resource_open") int64_t roam_resource_open(const char *ptr, uint32_t len);

/* Runs a read-only SQL statement on the table `handle`, with the parameters ?1, ?2... given as
 * a CBOR array of values (null, integers, floats, text, byte strings) at params..+params_len;
 * params_len 0 means none. Returns a cursor (>= 0) or -ROAM_E_NOT_FOUND, -ROAM_E_WRONG_TYPE,
 * -ROAM_E_INVALID_ARGUMENT, -ROAM_E_TOO_LARGE (16 cursors open), -ROAM_E_SQL. */
ROAM_IMPORT("table_query")
int64_t roam_table_query(uint32_t handle, const char *sql, uint32_t sql_len, const void *params, uint32_t params_len);

/* Stages the next batch of rows of `cursor` and returns its length in bytes (> 0), 0 when the
 * rows are exhausted, or -ROAM_E_NOT_FOUND, -ROAM_E_SQL. A batch is a CBOR array (the host
 * writes it with indefinite length: 0x9f ... 0xff) of rows, each a definite array of cells.
 * A batch staged and not read is dropped. */
ROAM_IMPORT("cursor_next") int64_t roam_cursor_next(uint32_t cursor);

/* Copies the staged batch to `ptr`, which needs room for the length cursor_next returned. Traps
 * if nothing is staged (a second read, after a 0 or an error, an unknown cursor). */
ROAM_IMPORT("cursor_read") void roam_cursor_read(uint32_t cursor, void *ptr);

/* Releases a cursor (its number may be reused). An unknown cursor is ignored. */
ROAM_IMPORT("cursor_close") void roam_cursor_close(uint32_t cursor);

/* Appends the UTF-8 line at ptr..ptr+len to the log resource `handle`. Returns 0 or
 * -ROAM_E_TOO_LARGE (over 4096 bytes), -ROAM_E_NOT_FOUND, -ROAM_E_WRONG_TYPE,
 * -ROAM_E_INVALID_ARGUMENT, -ROAM_E_UNAVAILABLE. Traps once the call appended more than the
 * host allows per call (1 MiB by default, each line counting at least 64 bytes). */
ROAM_IMPORT("log_append") int64_t roam_log_append(uint32_t handle, const char *ptr, uint32_t len);

/* Length of the message explaining the last call of this entry that returned an error code
 * (0 if none; a later success does not clear it). */
ROAM_IMPORT("last_error_len") uint32_t roam_last_error_len(void);

/* Copies that message to `ptr`, which needs room for roam_last_error_len() bytes. */
ROAM_IMPORT("last_error_read") void roam_last_error_read(void *ptr);

/* ---------------------------------------------------------------------------------------- */
/* Memory                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* A string that is not NUL-terminated: CBOR text and host names come as pointer and length. */
typedef struct roam_str {
    const char *ptr;
    size_t len;
} roam_str;

ROAM_INLINE size_t roam_strlen(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

ROAM_INLINE roam_str roam_cstr(const char *s) {
    roam_str out = {s, roam_strlen(s)};
    return out;
}

ROAM_INLINE bool roam_str_eq(roam_str a, const char *b) {
    size_t n = roam_strlen(b);
    return a.len == n && __builtin_memcmp(a.ptr, b, n) == 0;
}

/* Byte order of two strings, as Rust orders String (a BTreeMap's keys, say). */
ROAM_INLINE int roam_str_cmp(roam_str a, roam_str b) {
    size_t n = a.len < b.len ? a.len : b.len;
    int c = __builtin_memcmp(a.ptr, b.ptr, n);
    if (c != 0) return c;
    return a.len < b.len ? -1 : a.len > b.len ? 1 : 0;
}

#if defined(__wasi__)

/* With wasi-libc, the libc's malloc owns the heap: a second allocator above __heap_base would
 * overwrite its blocks. Declared here so that the header needs no libc header. */
void *malloc(size_t size);
void *realloc(void *ptr, size_t size);

ROAM_INLINE void *roam_alloc(size_t size) { return malloc(size); }

ROAM_INLINE void *roam_realloc(void *ptr, size_t old_size, size_t new_size) {
    (void)old_size;
    return realloc(ptr, new_size);
}

#else /* freestanding */

/*
 * Without a libc, clang still emits calls to memcpy, memmove, memset and memcmp (struct copies,
 * __builtin_memcpy of unknown sizes), so they are defined here. Weak: a file that brings its
 * own wins, and several files including this header link. `no_builtin` keeps clang from
 * turning the loops back into calls to themselves.
 */
#if !defined(ROAM_NO_MEM_FUNCTIONS)
__attribute__((weak, no_builtin)) void *memcpy(void *restrict dst, const void *restrict src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

__attribute__((weak, no_builtin)) void *memmove(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (d < s) {
        while (n--) *d++ = *s++;
    } else {
        while (n--) d[n] = s[n];
    }
    return dst;
}

__attribute__((weak, no_builtin)) void *memset(void *dst, int c, size_t n) {
    unsigned char *d = dst;
    while (n--) *d++ = (unsigned char)c;
    return dst;
}

__attribute__((weak, no_builtin)) int memcmp(const void *a, const void *b, size_t n) {
    const unsigned char *x = a, *y = b;
    for (; n; n--, x++, y++) {
        if (*x != *y) return *x < *y ? -1 : 1;
    }
    return 0;
}
#endif

/*
 * A bump allocator: the heap starts at __heap_base (wasm-ld's symbol for the first byte past
 * the data and the stack) and grows the memory as needed. Nothing is freed one block at a time;
 * roam_heap_mark/roam_heap_release free everything allocated since a mark.
 *
 * Why this is enough: a query's instance lives for one call, so its heap is thrown away whole.
 * An agent's heap is part of its memory, so it travels with the agent: the top below lives in
 * linear memory too (a static), and comes back with the snapshot on the next host. An agent should
 * release what it only needed for one call (its input, say) so that its snapshot does not grow
 * by that much at every hop.
 *
 * Growing past the host's memory limit traps (the host refuses the growth outright), so in
 * practice roam_alloc does not return NULL on a roam host; it does if memory.grow says -1.
 */
extern unsigned char __heap_base;

/* The heap's top; 0 before the first allocation. Weak, so that every file shares one. */
__attribute__((weak)) uintptr_t roam_heap_top;

#define ROAM_WASM_PAGE 65536u
/* Every block is aligned like malloc's, for any type. */
#define ROAM_ALIGN 16u

ROAM_INLINE uintptr_t roam_heap_mark(void) {
    return roam_heap_top ? roam_heap_top : (uintptr_t)&__heap_base;
}

/* Frees everything allocated since `mark` (a value roam_heap_mark returned). */
ROAM_INLINE void roam_heap_release(uintptr_t mark) { roam_heap_top = mark; }

/* Makes the heap end at `end`, growing the memory if needed. */
ROAM_INLINE bool roam__heap_end(uintptr_t end) {
    uint64_t have = (uint64_t)__builtin_wasm_memory_size(0) * ROAM_WASM_PAGE;
    if (end > have) {
        size_t pages = (size_t)((end - have + ROAM_WASM_PAGE - 1) / ROAM_WASM_PAGE);
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) return false;
    }
    roam_heap_top = end;
    return true;
}

ROAM_INLINE void *roam_alloc(size_t size) {
    uintptr_t start = (roam_heap_mark() + ROAM_ALIGN - 1) & ~(uintptr_t)(ROAM_ALIGN - 1);
    if (size > UINTPTR_MAX - start) return NULL;
    return roam__heap_end(start + size) ? (void *)start : NULL;
}

/* Grows (or shrinks) a block. The last block allocated grows in place; any other is copied to
 * a new one and its old bytes are simply not reused. */
ROAM_INLINE void *roam_realloc(void *ptr, size_t old_size, size_t new_size) {
    uintptr_t at = (uintptr_t)ptr;
    if (ptr && at + old_size == roam_heap_top) {
        if (new_size > UINTPTR_MAX - at) return NULL;
        return roam__heap_end(at + new_size) ? ptr : NULL;
    }
    void *moved = roam_alloc(new_size);
    if (moved && ptr) __builtin_memcpy(moved, ptr, old_size < new_size ? old_size : new_size);
    return moved;
}

/* Frees everything allocated since `mark` but the `len` bytes at `keep`, which are moved down
 * to the new top of the heap; returns their new address. How an agent keeps one piece of a
 * scratch buffer (a host name out of its arrival) without keeping the whole buffer. */
ROAM_INLINE void *roam_heap_keep(uintptr_t mark, const void *keep, size_t len) {
    roam_heap_release(mark);
    void *to = roam_alloc(len);
    /* memmove: the new block may overlap the bytes it keeps. */
    if (to) __builtin_memmove(to, keep, len);
    return to;
}

#endif /* __wasi__ */

/* ---------------------------------------------------------------------------------------- */
/* A growable byte buffer, and the CBOR writer on it                                          */
/* ---------------------------------------------------------------------------------------- */

/* Start with `roam_buf b = {0};`. If an allocation fails, `failed` is set and later writes are
 * ignored, so a whole result can be written before one check (roam_ok does it). */
typedef struct roam_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
    bool failed;
} roam_buf;

ROAM_INLINE bool roam_buf_reserve(roam_buf *b, size_t more) {
    if (b->failed) return false;
    if (more <= b->cap - b->len) return true;
    if (more > SIZE_MAX / 2 - b->len) {
        b->failed = true;
        return false;
    }
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + more) cap *= 2;
    uint8_t *data = roam_realloc(b->data, b->cap, cap);
    if (!data) {
        b->failed = true;
        return false;
    }
    b->data = data;
    b->cap = cap;
    return true;
}

ROAM_INLINE void roam_buf_append(roam_buf *b, const void *bytes, size_t len) {
    if (!roam_buf_reserve(b, len)) return;
    if (len) __builtin_memcpy(b->data + b->len, bytes, len);
    b->len += len;
}

ROAM_INLINE void roam_buf_byte(roam_buf *b, uint8_t byte) { roam_buf_append(b, &byte, 1); }

/* Plain text, for messages (not CBOR). */
ROAM_INLINE void roam_buf_text(roam_buf *b, const char *s) { roam_buf_append(b, s, roam_strlen(s)); }

/* A decimal number, for messages (not CBOR). */
ROAM_INLINE void roam_buf_int(roam_buf *b, int64_t n) {
    char digits[20];
    size_t i = sizeof digits;
    /* Negated as unsigned: -INT64_MIN does not fit an int64_t. */
    uint64_t u = n < 0 ? 0 - (uint64_t)n : (uint64_t)n;
    do {
        digits[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (n < 0) roam_buf_byte(b, '-');
    roam_buf_append(b, digits + i, sizeof digits - i);
}

/*
 * CBOR writer. roam reads what it decodes (Next, Manifest, query parameters) with ciborium and
 * serde: integers may use any head width and floats any precision, but an enum (Next's Go, Home,
 * Finish) must be a *definite* map of one entry and a struct's field names must be definite
 * text, so write definite lengths there. Results that only the client shows (a query's answer,
 * an agent's result) may use indefinite arrays and maps too.
 */

/* A head: major type 0-7 in the top 3 bits, then the argument in its shortest form. */
ROAM_INLINE void roam_put_head(roam_buf *b, uint8_t major, uint64_t arg) {
    uint8_t head[9];
    size_t n;
    uint8_t m = (uint8_t)(major << 5);
    if (arg < 24) {
        head[0] = m | (uint8_t)arg;
        n = 1;
    } else if (arg <= 0xff) {
        head[0] = m | 24;
        n = 2;
    } else if (arg <= 0xffff) {
        head[0] = m | 25;
        n = 3;
    } else if (arg <= 0xffffffffu) {
        head[0] = m | 26;
        n = 5;
    } else {
        head[0] = m | 27;
        n = 9;
    }
    /* The argument, big-endian, in the n - 1 bytes after the first. */
    for (size_t i = n - 1; i > 0; i--, arg >>= 8) head[i] = (uint8_t)arg;
    roam_buf_append(b, head, n);
}

ROAM_INLINE void roam_put_uint(roam_buf *b, uint64_t n) { roam_put_head(b, 0, n); }

/* Negative n is major type 1 with argument -1 - n, which is ~n in two's complement. */
ROAM_INLINE void roam_put_int(roam_buf *b, int64_t n) {
    if (n >= 0) roam_put_head(b, 0, (uint64_t)n);
    else roam_put_head(b, 1, ~(uint64_t)n);
}

ROAM_INLINE void roam_put_bytes(roam_buf *b, const void *bytes, size_t len) {
    roam_put_head(b, 2, len);
    roam_buf_append(b, bytes, len);
}

/* Text must be UTF-8. */
ROAM_INLINE void roam_put_text(roam_buf *b, const char *text, size_t len) {
    roam_put_head(b, 3, len);
    roam_buf_append(b, text, len);
}

ROAM_INLINE void roam_put_str(roam_buf *b, const char *text) { roam_put_text(b, text, roam_strlen(text)); }

ROAM_INLINE void roam_put_array(roam_buf *b, uint64_t items) { roam_put_head(b, 4, items); }

ROAM_INLINE void roam_put_map(roam_buf *b, uint64_t pairs) { roam_put_head(b, 5, pairs); }

/* Indefinite-length array and map: items (key, value, key, value... for a map), then roam_put_break. */
ROAM_INLINE void roam_put_array_begin(roam_buf *b) { roam_buf_byte(b, 0x9f); }

ROAM_INLINE void roam_put_map_begin(roam_buf *b) { roam_buf_byte(b, 0xbf); }

ROAM_INLINE void roam_put_break(roam_buf *b) { roam_buf_byte(b, 0xff); }

ROAM_INLINE void roam_put_bool(roam_buf *b, bool v) { roam_buf_byte(b, v ? 0xf5 : 0xf4); }

ROAM_INLINE void roam_put_null(roam_buf *b) { roam_buf_byte(b, 0xf6); }

/* Always a double (0xfb): exact, and roam reads a float of any width. (ciborium itself writes
 * the shortest width that keeps the value, so its bytes may differ; the value does not.) */
ROAM_INLINE void roam_put_double(roam_buf *b, double v) {
    union {
        double d;
        uint64_t u;
    } bits = {v};
    uint8_t out[9] = {0xfb};
    for (int i = 8; i > 0; i--, bits.u >>= 8) out[i] = (uint8_t)bits.u;
    roam_buf_append(b, out, sizeof out);
}

/* ---------------------------------------------------------------------------------------- */
/* The CBOR reader                                                                            */
/* ---------------------------------------------------------------------------------------- */

/*
 * Reads one item at a time from a buffer, without copying: text and byte strings are returned
 * as pointers into it. A read that does not find what it asks for sets `failed` (sticky) and
 * returns false or zero, so a decoder may read a whole structure and check once at the end.
 *
 * What roam sends: definite lengths everywhere (the input made from JSON, Arrival), except row
 * batches, whose outer array is indefinite; floats of any width (rows: always double). Tags are
 * skipped before typed reads, as ciborium does. Indefinite-length (chunked) text and byte
 * strings are skipped by roam_skip but refused by roam_get_text/roam_get_bytes: roam never sends
 * them, and they cannot be returned without copying.
 */
typedef struct roam_reader {
    const uint8_t *at;
    const uint8_t *end;
    bool failed;
} roam_reader;

/* A container's length, for roam_get_array/roam_get_map, when it is indefinite. */
#define ROAM_INDEFINITE UINT64_MAX

/* Nesting deeper than this is refused by roam_skip (the host allows 256; a guest's stack is small). */
#define ROAM_MAX_DEPTH 64

ROAM_INLINE roam_reader roam_reader_of(const void *bytes, size_t len) {
    roam_reader r = {(const uint8_t *)bytes, (const uint8_t *)bytes + len, false};
    return r;
}

ROAM_INLINE bool roam__fail(roam_reader *r) {
    r->failed = true;
    r->at = r->end;
    return false;
}

ROAM_INLINE bool roam_at_end(const roam_reader *r) { return r->at >= r->end; }

/* The next item's major type (0-7), or -1 at the end of the buffer. 0xff (a break) is 7. */
ROAM_INLINE int roam_peek_major(const roam_reader *r) { return r->at < r->end ? *r->at >> 5 : -1; }

/* Whether the next byte is a break (0xff), which ends an indefinite-length container. */
ROAM_INLINE bool roam_peek_break(const roam_reader *r) { return r->at < r->end && *r->at == 0xff; }

/* Reads a head: its major type, its argument (a number, a length, a simple value, a float's
 * bits) and whether its length is indefinite (additional info 31; for major 7, a break). */
ROAM_INLINE bool roam_get_head(roam_reader *r, uint8_t *major, uint64_t *arg, bool *indefinite) {
    if (r->at >= r->end) return roam__fail(r);
    uint8_t first = *r->at++;
    uint8_t info = first & 0x1f;
    *major = first >> 5;
    *indefinite = false;
    *arg = info;
    if (info < 24) return true;
    if (info == 31) {
        /* Indefinite length exists for strings, arrays and maps; for 7 it is the break. */
        if (*major < 2 || *major == 6) return roam__fail(r);
        *indefinite = true;
        return true;
    }
    if (info > 27) return roam__fail(r);
    size_t width = (size_t)1 << (info - 24);
    if ((size_t)(r->end - r->at) < width) return roam__fail(r);
    uint64_t v = 0;
    for (size_t i = 0; i < width; i++) v = v << 8 | *r->at++;
    *arg = v;
    return true;
}

/* Reads a head after any tags (which say how to read a value: ignored, as ciborium does). */
ROAM_INLINE bool roam__value_head(roam_reader *r, uint8_t *major, uint64_t *arg, bool *indefinite) {
    do {
        if (!roam_get_head(r, major, arg, indefinite)) return false;
    } while (*major == 6);
    return true;
}

/* Skips one whole item: nested arrays, maps, tags and chunked strings included. */
ROAM_INLINE bool roam__skip(roam_reader *r, int depth) {
    uint8_t major;
    uint64_t arg;
    bool indefinite;
    if (depth > ROAM_MAX_DEPTH) return roam__fail(r);
    if (!roam_get_head(r, &major, &arg, &indefinite)) return false;
    switch (major) {
    case 0:
    case 1:
        return true;
    case 2:
    case 3:
        if (indefinite) {
            /* Chunks (definite strings of the same type), then a break. */
            while (!roam_peek_break(r)) {
                if (roam_peek_major(r) != major || !roam__skip(r, depth + 1)) return roam__fail(r);
            }
            r->at++;
            return true;
        }
        if (arg > (uint64_t)(r->end - r->at)) return roam__fail(r);
        r->at += arg;
        return true;
    case 4:
    case 5: {
        if (indefinite) {
            while (!roam_peek_break(r)) {
                if (!roam__skip(r, depth + 1)) return false;
                if (major == 5 && !roam__skip(r, depth + 1)) return false;
            }
            r->at++;
            return true;
        }
        /* Each item takes at least a byte: a length beyond what is left cannot be right, and
         * checking it first keeps a hostile length from looping for long. */
        if (arg > (uint64_t)(r->end - r->at)) return roam__fail(r);
        uint64_t items = major == 5 ? arg * 2 : arg;
        for (uint64_t i = 0; i < items; i++) {
            if (!roam__skip(r, depth + 1)) return false;
        }
        return true;
    }
    case 6:
        return roam__skip(r, depth + 1);
    default:
        /* Simple values and floats: their head was all of them. A break is not an item. */
        return indefinite ? roam__fail(r) : true;
    }
}

ROAM_INLINE bool roam_skip(roam_reader *r) { return roam__skip(r, 0); }

ROAM_INLINE bool roam_get_uint(roam_reader *r, uint64_t *out) {
    uint8_t major;
    bool indefinite;
    *out = 0;
    if (!roam__value_head(r, &major, out, &indefinite)) return false;
    if (major != 0) {
        *out = 0;
        return roam__fail(r);
    }
    return true;
}

/* Any CBOR integer in the range of int64_t (major type 0 or 1). */
ROAM_INLINE bool roam_get_int(roam_reader *r, int64_t *out) {
    uint8_t major;
    uint64_t arg;
    bool indefinite;
    *out = 0;
    if (!roam__value_head(r, &major, &arg, &indefinite)) return false;
    if ((major != 0 && major != 1) || arg > (uint64_t)INT64_MAX) return roam__fail(r);
    /* Major type 1 holds -1 - n. */
    *out = major == 0 ? (int64_t)arg : -1 - (int64_t)arg;
    return true;
}

/* A half-precision float's bits as a double (no libm: built from its fields). */
ROAM_INLINE double roam__half(uint16_t h) {
    uint64_t sign = (uint64_t)(h >> 15) << 63;
    uint32_t exp = (h >> 10) & 0x1f;
    uint64_t mant = h & 0x3ff;
    union {
        uint64_t u;
        double d;
    } bits;
    if (exp == 0) {
        /* Subnormal (or zero): mant * 2^-24. */
        double v = (double)mant / 16777216.0;
        return sign ? -v : v;
    }
    if (exp == 31) {
        bits.u = sign | (uint64_t)0x7ff << 52 | mant << 42; /* infinity or NaN */
    } else {
        bits.u = sign | (uint64_t)(exp - 15 + 1023) << 52 | mant << 42;
    }
    return bits.d;
}

/* A float of any width (half, single, double); an integer is converted too, for input that came
 * from JSON, where `2` and `2.0` are different numbers. */
ROAM_INLINE bool roam_get_double(roam_reader *r, double *out) {
    uint8_t major;
    uint64_t arg;
    bool indefinite;
    const uint8_t *start;
    *out = 0;
    /* The width is in the head's first byte, which roam_get_head does not return. */
    do {
        start = r->at;
        if (!roam_get_head(r, &major, &arg, &indefinite)) return false;
    } while (major == 6);
    if (major == 0) {
        *out = (double)arg;
        return true;
    }
    if (major == 1 && arg <= (uint64_t)INT64_MAX) {
        *out = (double)(-1 - (int64_t)arg);
        return true;
    }
    if (major != 7) return roam__fail(r);
    switch (*start & 0x1f) {
    case 25:
        *out = roam__half((uint16_t)arg);
        return true;
    case 26: {
        union {
            uint32_t u;
            float f;
        } bits = {(uint32_t)arg};
        *out = bits.f;
        return true;
    }
    case 27: {
        union {
            uint64_t u;
            double d;
        } bits = {arg};
        *out = bits.d;
        return true;
    }
    default:
        return roam__fail(r);
    }
}

ROAM_INLINE bool roam_get_bool(roam_reader *r, bool *out) {
    uint8_t major;
    uint64_t arg;
    bool indefinite;
    *out = false;
    if (!roam__value_head(r, &major, &arg, &indefinite)) return false;
    /* false is simple value 20, true 21. */
    if (major != 7 || indefinite || (arg != 20 && arg != 21)) return roam__fail(r);
    *out = arg == 21;
    return true;
}

/* If the next item is null (or undefined), reads it and returns true; otherwise reads nothing. */
ROAM_INLINE bool roam_get_null(roam_reader *r) {
    if (r->at < r->end && (*r->at == 0xf6 || *r->at == 0xf7)) {
        r->at++;
        return true;
    }
    return false;
}

ROAM_INLINE bool roam__string(roam_reader *r, uint8_t want, roam_str *out) {
    uint8_t major;
    uint64_t arg;
    bool indefinite;
    out->ptr = "";
    out->len = 0;
    if (!roam__value_head(r, &major, &arg, &indefinite)) return false;
    if (major != want || indefinite || arg > (uint64_t)(r->end - r->at)) return roam__fail(r);
    out->ptr = (const char *)r->at;
    out->len = (size_t)arg;
    r->at += arg;
    return true;
}

/* A definite text string, pointing into the buffer (not NUL-terminated). */
ROAM_INLINE bool roam_get_text(roam_reader *r, roam_str *out) { return roam__string(r, 3, out); }

/* A definite byte string, pointing into the buffer. */
ROAM_INLINE bool roam_get_bytes(roam_reader *r, roam_str *out) { return roam__string(r, 2, out); }

ROAM_INLINE bool roam__container(roam_reader *r, uint8_t want, uint64_t *count) {
    uint8_t major;
    uint64_t arg;
    bool indefinite;
    *count = 0;
    if (!roam__value_head(r, &major, &arg, &indefinite)) return false;
    if (major != want) return roam__fail(r);
    *count = indefinite ? ROAM_INDEFINITE : arg;
    return true;
}

/* An array's head: `*items` is its length, or ROAM_INDEFINITE. Read the items with roam_next. */
ROAM_INLINE bool roam_get_array(roam_reader *r, uint64_t *items) { return roam__container(r, 4, items); }

/* A map's head: `*pairs` is its number of pairs, or ROAM_INDEFINITE. Read each key, then its
 * value, after each roam_next. */
ROAM_INLINE bool roam_get_map(roam_reader *r, uint64_t *pairs) { return roam__container(r, 5, pairs); }

/*
 * Whether another item (or map pair) follows in a container whose head gave `*left`; counts it.
 * Works for both lengths, so a loop need not care which one the sender chose:
 *
 *     uint64_t left;
 *     roam_get_array(&r, &left);
 *     while (roam_next(&r, &left)) { ...read one item... }
 *
 * At an indefinite container's end it reads the break. False once the reader has failed.
 */
ROAM_INLINE bool roam_next(roam_reader *r, uint64_t *left) {
    if (r->failed) return false;
    if (*left == ROAM_INDEFINITE) {
        if (roam_peek_break(r)) {
            r->at++;
            return false;
        }
        return !roam_at_end(r) || roam__fail(r);
    }
    if (*left == 0) return false;
    --*left;
    return true;
}

/* Finds `key` (text) in the map at the front of `map` and returns a reader at its value. Reads
 * a copy, so the same map can be searched again. */
ROAM_INLINE bool roam_find(roam_reader map, const char *key, roam_reader *value) {
    uint64_t left;
    roam_str k;
    if (!roam_get_map(&map, &left)) return false;
    while (roam_next(&map, &left)) {
        if (roam_peek_major(&map) == 3) {
            if (!roam_get_text(&map, &k)) return false;
            if (roam_str_eq(k, key)) {
                *value = map;
                return true;
            }
        } else if (!roam_skip(&map)) {
            return false; /* a key of another type: never the one asked for */
        }
        if (!roam_skip(&map)) return false;
    }
    return false;
}

/* ---------------------------------------------------------------------------------------- */
/* One call: input, outcome, diagnostics                                                      */
/* ---------------------------------------------------------------------------------------- */

/* The call's input (CBOR), copied to the heap. Empty for the manifest and recall entries. */
ROAM_INLINE roam_reader roam_input(void) {
    uint32_t len = roam_input_len();
    /* A 1-byte block for an empty input: the host checks the pointer even for 0 bytes. */
    uint8_t *buf = roam_alloc(len ? len : 1);
    if (!buf) {
        roam_reader none = roam_reader_of("", 0);
        none.failed = true;
        return none;
    }
    roam_input_read(buf);
    return roam_reader_of(buf, len);
}

ROAM_INLINE void roam_log_str(uint32_t level, const char *message) {
    roam_log(level, message, (uint32_t)roam_strlen(message));
}

/* Ends the call with an error: `message` is what the caller is told. */
ROAM_INLINE void roam_fail_text(const char *message, size_t len) {
    roam_finish(ROAM_FINISH_ERR, message, (uint32_t)len);
}

ROAM_INLINE void roam_fail(const char *message) { roam_fail_text(message, roam_strlen(message)); }

/* Ends the call with `result` (CBOR), or with an error if it could not be written. */
ROAM_INLINE void roam_ok(const roam_buf *result) {
    if (result->failed) {
        roam_fail("out of memory while writing the result");
        return;
    }
    /* A zero-length result still needs a pointer inside the memory. */
    roam_finish(ROAM_FINISH_OK, result->data ? (const void *)result->data : (const void *)"", (uint32_t)result->len);
}

/* A name for an ABI error code (negated or not). */
ROAM_INLINE const char *roam_error_name(int64_t code) {
    switch (code < 0 ? -code : code) {
    case ROAM_E_NOT_FOUND: return "not found";
    case ROAM_E_DENIED: return "denied";
    case ROAM_E_WRONG_TYPE: return "wrong resource type";
    case ROAM_E_INVALID_ARGUMENT: return "invalid argument";
    case ROAM_E_SQL: return "SQL error";
    case ROAM_E_TOO_LARGE: return "too large";
    case ROAM_E_UNAVAILABLE: return "unavailable";
    case ROAM_E_MALFORMED: return "malformed CBOR from the host";
    default: return "unknown error";
    }
}

/* Appends the host's explanation of the last failed call (roam_last_error_*), if any. */
ROAM_INLINE void roam_buf_last_error(roam_buf *b) {
    uint32_t len = roam_last_error_len();
    if (len == 0 || !roam_buf_reserve(b, len)) return;
    roam_last_error_read(b->data + b->len);
    b->len += len;
}

/* Ends the call with an error about a host call that returned `code` (< 0):
 * "WHAT: NAME (code N): the host's message". */
ROAM_INLINE void roam_fail_call(const char *what, int64_t code) {
    roam_buf m = {0};
    roam_buf_text(&m, what);
    roam_buf_text(&m, ": ");
    roam_buf_text(&m, roam_error_name(code));
    roam_buf_text(&m, " (code ");
    roam_buf_int(&m, code);
    roam_buf_text(&m, ")");
    if (code != -ROAM_E_MALFORMED && roam_last_error_len() > 0) {
        roam_buf_text(&m, ": ");
        roam_buf_last_error(&m);
    }
    if (m.failed) roam_fail(what);
    else roam_fail_text((const char *)m.data, m.len);
}

/* ---------------------------------------------------------------------------------------- */
/* Tables                                                                                     */
/* ---------------------------------------------------------------------------------------- */

/* Opens a resource by name: a handle (>= 0) or a negative code (see roam_resource_open). */
ROAM_INLINE int64_t roam_open(const char *name) {
    return roam_resource_open(name, (uint32_t)roam_strlen(name));
}

/* A query's rows, batch by batch. One batch buffer is reused for every batch of the query (it
 * grows to the largest one), so a row's strings are valid only until the next roam_rows_next. */
typedef struct roam_rows {
    uint32_t cursor;
    bool open;
    uint8_t *batch;
    size_t cap;
    roam_reader at; /* what is left of the current batch */
    uint64_t left;  /* rows left in it, or ROAM_INDEFINITE */
} roam_rows;

/* Runs `sql` on the table `table` with `params` (a CBOR array of values, or NULL for none).
 * Returns 0, or a negative code (see roam_table_query; roam_fail_call explains it). */
ROAM_INLINE int64_t roam_query(uint32_t table, const char *sql, const roam_buf *params, roam_rows *rows) {
    static const uint8_t no_params[1] = {0x80};
    const void *p = no_params;
    uint32_t p_len = 0;
    if (params) {
        if (params->failed) return -ROAM_E_TOO_LARGE;
        p = params->data ? (const void *)params->data : (const void *)no_params;
        p_len = (uint32_t)params->len;
    }
    roam_rows none = {0};
    *rows = none;
    rows->left = 0;
    int64_t cursor = roam_table_query(table, sql, (uint32_t)roam_strlen(sql), p, p_len);
    if (cursor < 0) return cursor;
    rows->cursor = (uint32_t)cursor;
    rows->open = true;
    return 0;
}

/*
 * The next row: returns 1 and sets `row` to a reader over that row's cells only, with `*cells`
 * their number (read them with roam_next(row, cells), or just in order); 0 when the rows are
 * done (the cursor is then closed); a negative code if the host failed (-ROAM_E_SQL...) or a
 * batch did not decode (-ROAM_E_MALFORMED). A cell is null, an integer, a double (REAL), text
 * or bytes: roam_get_null, roam_get_int, roam_get_double, roam_get_text, roam_get_bytes.
 */
ROAM_INLINE int roam_rows_next(roam_rows *rows, roam_reader *row, uint64_t *cells) {
    while (rows->open) {
        bool more = rows->left == ROAM_INDEFINITE ? !roam_peek_break(&rows->at) : rows->left > 0;
        if (more && !roam_at_end(&rows->at)) {
            const uint8_t *start = rows->at.at;
            if (rows->left != ROAM_INDEFINITE) rows->left--;
            if (!roam_get_array(&rows->at, cells)) return -ROAM_E_MALFORMED;
            const uint8_t *first_cell = rows->at.at;
            /* Find where the row ends, so that the caller may read as few cells as it likes. */
            rows->at.at = start;
            if (!roam_skip(&rows->at)) return -ROAM_E_MALFORMED;
            row->at = first_cell;
            row->end = rows->at.at;
            row->failed = false;
            return 1;
        }
        if (more) return -ROAM_E_MALFORMED; /* the batch ended without its break */
        int64_t len = roam_cursor_next(rows->cursor);
        if (len < 0) return (int)len;
        if (len == 0) {
            roam_cursor_close(rows->cursor);
            rows->open = false;
            return 0;
        }
        if ((uint64_t)len > rows->cap) {
            uint8_t *grown = roam_realloc(rows->batch, rows->cap, (size_t)len);
            if (!grown) return -ROAM_E_TOO_LARGE;
            rows->batch = grown;
            rows->cap = (size_t)len;
        }
        roam_cursor_read(rows->cursor, rows->batch);
        rows->at = roam_reader_of(rows->batch, (size_t)len);
        if (!roam_get_array(&rows->at, &rows->left)) return -ROAM_E_MALFORMED;
    }
    return 0;
}

/* Closes the cursor early (rows left unread). Harmless after the last row. */
ROAM_INLINE void roam_rows_close(roam_rows *rows) {
    if (rows->open) roam_cursor_close(rows->cursor);
    rows->open = false;
}

/* ---------------------------------------------------------------------------------------- */
/* Agents                                                                                     */
/* ---------------------------------------------------------------------------------------- */
/*
 * An agent exports ROAM_AGENT_MANIFEST, ROAM_AGENT_START and ROAM_AGENT_ARRIVE, and may export
 * ROAM_AGENT_DEPART and ROAM_AGENT_RECALL. Its state is its memory: keep it in statics and on
 * the heap, and it is there on the next host. Never keep handles or cursors (they belong to
 * one call) nor the input buffer (release it; see roam_heap_keep).
 *
 * A flag such as "finish was called" kept in memory comes back from the snapshot as the last
 * call left it: reset such things at the start of every entry.
 */

/* The manifest, for roam_agent_manifest: {"resources": [...]} with `count` resources, each
 * then written with roam_manifest_resource. No resources: roam_manifest(&b, 0). */
ROAM_INLINE void roam_manifest(roam_buf *b, size_t count) {
    roam_put_map(b, 1);
    roam_put_str(b, "resources");
    roam_put_array(b, count);
}

/* One declared resource: kind "table" or "log"; binding "identifier", "value" or "type" (all
 * lower case). Opening it still needs its capability in the signature. */
ROAM_INLINE void roam_manifest_resource(roam_buf *b, const char *name, const char *kind, const char *binding) {
    roam_put_map(b, 3);
    roam_put_str(b, "name");
    roam_put_str(b, name);
    roam_put_str(b, "kind");
    roam_put_str(b, kind);
    roam_put_str(b, "binding");
    roam_put_str(b, binding);
}

/*
 * Next, the result of roam_agent_start and roam_agent_arrive: a map of one entry whose key is
 * the variant, case-sensitive. Go needs its "alternates" even when there are none.
 */

/* {"Go": {"host": HOST, "alternates": [...]}}: move to a peer (its name or address); if it is
 * unreachable, to the first of `alternates` that is. */
ROAM_INLINE void roam_next_go(roam_buf *b, roam_str host, const roam_str *alternates, size_t count) {
    roam_put_map(b, 1);
    roam_put_str(b, "Go");
    roam_put_map(b, 2);
    roam_put_str(b, "host");
    roam_put_text(b, host.ptr, host.len);
    roam_put_str(b, "alternates");
    roam_put_array(b, count);
    for (size_t i = 0; i < count; i++) roam_put_text(b, alternates[i].ptr, alternates[i].len);
}

/* Home and Finish carry the agent's result as a byte string whose content is itself CBOR: the
 * result is written on its own first, then wrapped. */
ROAM_INLINE void roam__next_ending(roam_buf *b, const char *variant, const roam_buf *result) {
    roam_put_map(b, 1);
    roam_put_str(b, variant);
    roam_put_map(b, 1);
    roam_put_str(b, "result");
    if (result->failed) b->failed = true;
    roam_put_bytes(b, result->data, result->len);
}

/* {"Home": {"result": h'...'}}: travel home and finish there with `result` (CBOR). On the home
 * host itself the agent finishes at once. */
ROAM_INLINE void roam_next_home(roam_buf *b, const roam_buf *result) { roam__next_ending(b, "Home", result); }

/* {"Finish": {"result": h'...'}}: finish here; the result is reported home. */
ROAM_INLINE void roam_next_finish(roam_buf *b, const roam_buf *result) { roam__next_ending(b, "Finish", result); }

/* The input of roam_agent_arrive. Strings point into the input buffer. */
typedef struct roam_arrival {
    roam_str host;           /* this host's name */
    roam_str address;        /* the address this host listens on */
    uint32_t hop;            /* hops made so far: 1 on the first host after home */
    roam_reader bindings;    /* at the array of {"name", "action", "error"}: roam_arrival_action */
    roam_reader unreachable; /* at the array of destinations that could not be reached */
} roam_arrival;

/* Decodes an Arrival (a map; its keys are read by name, in any order, unknown ones skipped). */
ROAM_INLINE bool roam_get_arrival(roam_reader *r, roam_arrival *a) {
    uint64_t left, hop = 0;
    int seen = 0;
    roam_str key;
    roam_arrival none = {0};
    *a = none;
    if (!roam_get_map(r, &left)) return false;
    while (roam_next(r, &left)) {
        if (!roam_get_text(r, &key)) return false;
        if (roam_str_eq(key, "host")) {
            seen |= 1;
            roam_get_text(r, &a->host);
        } else if (roam_str_eq(key, "address")) {
            seen |= 2;
            roam_get_text(r, &a->address);
        } else if (roam_str_eq(key, "hop")) {
            seen |= 4;
            roam_get_uint(r, &hop);
        } else if (roam_str_eq(key, "bindings")) {
            a->bindings = *r;
            roam_skip(r);
        } else if (roam_str_eq(key, "unreachable")) {
            a->unreachable = *r;
            roam_skip(r);
        } else {
            roam_skip(r);
        }
    }
    if (hop > UINT32_MAX) return roam__fail(r);
    a->hop = (uint32_t)hop;
    return !r->failed && seen == 7;
}

/* How the host bound the declared resource `name` here: "mv", "gr", "cp", "rb" or "unbound"
 * (then `error`, if not NULL, says why). False if the arrival does not mention it. */
ROAM_INLINE bool roam_arrival_action(const roam_arrival *a, const char *name, roam_str *action, roam_str *error) {
    roam_reader r = a->bindings;
    uint64_t left;
    if (!r.at || !roam_get_array(&r, &left)) return false;
    while (roam_next(&r, &left)) {
        roam_reader entry = r, field;
        roam_str found = {0};
        if (!roam_skip(&r)) return false;
        if (!roam_find(entry, "name", &field) || !roam_get_text(&field, &found) || !roam_str_eq(found, name)) continue;
        if (!roam_find(entry, "action", &field) || !roam_get_text(&field, action)) return false;
        if (error) {
            error->ptr = "";
            error->len = 0;
            if (roam_find(entry, "error", &field) && !roam_get_null(&field)) roam_get_text(&field, error);
        }
        return true;
    }
    return false;
}

#endif /* ROAM_H */
