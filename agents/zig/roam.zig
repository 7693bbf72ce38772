//! roam for Zig guests: the host's imports, a small CBOR writer and reader, and the glue that
//! turns plain Zig functions into a query module or a mobile agent. The Zig counterpart of
//! roam-sdk (sdk/), written against the same ABI (roam_abi in sdk/abi/src/lib.rs); built by
//! `cargo xtask agents` with the Zig version pinned in xtask/src/zig.rs.
//!
//! A module's root file imports this one, exports its entries and installs the panic handler:
//!
//! ```zig
//! const roam = @import("roam.zig");
//! pub const panic = roam.panic;
//! export fn roam_query() void {
//!     roam.query(run);
//! }
//! fn run(input: *roam.Reader, out: *roam.Writer) !void { ... }
//! ```
//!
//! Memory. Every entry call runs on a fresh instance (an agent's restored from its snapshot),
//! so nothing here needs freeing by hand: `scratch()` is an arena emptied when the entry returns
//! (input, batches of rows, results), and `heap` is for what must outlive the call (an agent's
//! state; it lives in linear memory, which the host carries from hop to hop).
//!
//! The tests at the end check the CBOR, byte for byte, against the examples of sdk/ABI.md;
//! `cargo xtask agents` runs them before it builds the modules.

const std = @import("std");

const Allocator = std.mem.Allocator;

/// The host's functions (ABI: every one lives in the import module "roam"). Pointers are passed
/// as plain u32 addresses into our memory: an empty slice gets address 0 (see `addr`).
const host = struct {
    extern "roam" fn input_len() u32;
    extern "roam" fn input_read(ptr: u32) void;
    extern "roam" fn finish(status: u32, ptr: u32, len: u32) void;
    extern "roam" fn log(level: u32, ptr: u32, len: u32) void;
    extern "roam" fn resource_open(ptr: u32, len: u32) i64;
    extern "roam" fn table_query(handle: u32, sql_ptr: u32, sql_len: u32, params_ptr: u32, params_len: u32) i64;
    extern "roam" fn cursor_next(cursor: u32) i64;
    extern "roam" fn cursor_read(cursor: u32, ptr: u32) void;
    extern "roam" fn cursor_close(cursor: u32) void;
    extern "roam" fn log_append(handle: u32, ptr: u32, len: u32) i64;
    extern "roam" fn last_error_len() u32;
    extern "roam" fn last_error_read(ptr: u32) void;
};

/// `finish` statuses.
const FINISH_OK: u32 = 0;
const FINISH_ERR: u32 = 1;

/// The address of a buffer, as the host reads it. The host checks `ptr <= memory size` even
/// for an empty range, and Zig gives no guarantee about where an empty slice points, so an
/// empty slice is passed as address 0, always in bounds.
fn addr(bytes: []const u8) u32 {
    if (bytes.len == 0) return 0;
    return @intCast(@intFromPtr(bytes.ptr));
}

fn len32(bytes: []const u8) u32 {
    return @intCast(bytes.len);
}

// ---------------------------------------------------------------------------------------------
// Memory, errors and the outcome of a call

/// For what must outlive one entry call: an agent's state. The allocator keeps its own
/// bookkeeping in linear memory too, so it comes back with the snapshot on the next host.
pub const heap: Allocator = std.heap.wasm_allocator;

/// Emptied at the end of each entry call (see `begin` and `end`).
var arena: std.heap.ArenaAllocator = std.heap.ArenaAllocator.init(std.heap.wasm_allocator);

/// For what one entry call needs: input, batches, results. Freed when the entry returns.
pub fn scratch() Allocator {
    return arena.allocator();
}

/// Whether this call set its outcome with status 0: the host traps on a second one, so the
/// panic handler must not try. It lives in linear memory, so an agent's snapshot would bring
/// it back set: every entry clears it first (`begin`).
var finished: bool = false;

/// What went wrong, in words, for the error message of the call: Zig errors carry no payload.
var detail_buf: [1024]u8 = undefined;
var detail_len: usize = 0;

/// Says why the next error happens; the entry reports it with the error's name.
pub fn explain(comptime fmt: []const u8, args: anytype) void {
    const written = std.fmt.bufPrint(&detail_buf, fmt, args) catch &detail_buf;
    detail_len = written.len;
}

/// Fails with `error.Invalid`, explained by `fmt`.
pub fn invalid(comptime fmt: []const u8, args: anytype) error{Invalid} {
    explain(fmt, args);
    return error.Invalid;
}

fn begin() void {
    finished = false;
    detail_len = 0;
    arena = std.heap.ArenaAllocator.init(heap);
}

fn end() void {
    arena.deinit();
    arena = std.heap.ArenaAllocator.init(heap);
}

/// Reports `bytes` (CBOR) as the call's result.
fn succeed(bytes: []const u8) void {
    finished = true;
    host.finish(FINISH_OK, addr(bytes), len32(bytes));
}

/// Reports `err` as the call's error: its name, then what `explain` said.
fn fail(err: anyerror) void {
    var buf: [1200]u8 = undefined;
    const detail = detail_buf[0..detail_len];
    const msg = if (detail.len == 0)
        std.fmt.bufPrint(&buf, "{s}", .{@errorName(err)}) catch &buf
    else
        std.fmt.bufPrint(&buf, "{s}: {s}", .{ @errorName(err), detail }) catch &buf;
    host.finish(FINISH_ERR, addr(msg), len32(msg));
}

fn onPanic(msg: []const u8, _: ?usize) noreturn {
    @branchHint(.cold);
    // After a successful `finish` the host would trap on ours; the trap below fails the call
    // either way, and the host reports our message with it.
    if (!finished) {
        const prefix = "panic: ";
        var buf: [prefix.len + 512]u8 = undefined;
        const n = @min(msg.len, buf.len - prefix.len);
        @memcpy(buf[0..prefix.len], prefix);
        @memcpy(buf[prefix.len..][0..n], msg[0..n]);
        host.finish(FINISH_ERR, addr(buf[0 .. prefix.len + n]), @intCast(prefix.len + n));
    }
    @trap();
}

/// The panic handler: a module's root file declares `pub const panic = roam.panic;`, so that a
/// safety check (an index out of bounds, an overflow) fails the call with its message.
pub const panic = std.debug.FullPanic(onPanic);

// ---------------------------------------------------------------------------------------------
// Host calls

/// Why a host call failed (roam_abi::ErrorCode, which the host returns negated).
pub const HostError = error{ NotFound, Denied, WrongType, InvalidArgument, Sql, TooLarge, Unavailable, UnknownHostError };

/// Reads a host function's result: a number, or a negated error code explained by
/// `last_error`, which becomes the call's detail.
fn check(ret: i64, what: []const u8) HostError!u32 {
    if (ret >= 0) return @intCast(ret);
    const n = host.last_error_len();
    const message: []const u8 = blk: {
        if (n == 0) break :blk "the host gave no details";
        const buf = scratch().alloc(u8, n) catch break :blk "(no memory to read the host's message)";
        host.last_error_read(addr(buf));
        break :blk buf;
    };
    explain("{s}: {s}", .{ what, message });
    return switch (ret) {
        -1 => error.NotFound,
        -2 => error.Denied,
        -3 => error.WrongType,
        -4 => error.InvalidArgument,
        -5 => error.Sql,
        -6 => error.TooLarge,
        -7 => error.Unavailable,
        else => error.UnknownHostError,
    };
}

/// The call's input (CBOR), in scratch memory.
fn readInput() ![]u8 {
    const buf = try scratch().alloc(u8, host.input_len());
    host.input_read(addr(buf));
    return buf;
}

/// Levels of the host's diagnostic log.
pub const Level = enum(u32) { err = 0, warn = 1, info = 2, debug = 3 };

/// Writes `msg` to the host's diagnostic log (no capability needed; truncated at 4096 bytes).
pub fn log(level: Level, msg: []const u8) void {
    host.log(@backingInt(level), addr(msg), len32(msg));
}

/// `log` with a format string; a message longer than 512 bytes is cut.
pub fn logf(level: Level, comptime fmt: []const u8, args: anytype) void {
    var buf: [512]u8 = undefined;
    log(level, std.fmt.bufPrint(&buf, fmt, args) catch &buf);
}

/// A SQL value: a query parameter, or a cell of a row (roam_abi::Value).
pub const Value = union(enum) {
    nil,
    integer: i64,
    real: f64,
    text: []const u8,
    blob: []const u8,
};

/// A table the host offers, opened for this call only: never keep it in an agent's state.
pub const Table = struct {
    handle: u32,

    /// Opens the table `name` (needs the capability `table:NAME` in the module's signature).
    pub fn open(name: []const u8) HostError!Table {
        return .{ .handle = try check(host.resource_open(addr(name), len32(name)), "resource_open") };
    }

    /// Runs a read-only `sql` with `params` bound to ?1, ?2, ...; read the rows with `Rows.next`.
    pub fn query(self: Table, sql: []const u8, params: []const Value) !Rows {
        var w = Writer.init(scratch());
        // No parameters: an empty range, which the host reads as none.
        if (params.len > 0) {
            try w.array(params.len);
            for (params) |p| try w.value(p);
        }
        const p = w.written();
        const cursor = try check(host.table_query(self.handle, addr(sql), len32(sql), addr(p), len32(p)), "table_query");
        return .{ .cursor = cursor };
    }
};

/// The rows of a query, a batch at a time:
///
/// ```zig
/// var rows = try table.query("SELECT region, amount_cents FROM sales", &.{});
/// defer rows.close();
/// while (try rows.next()) {
///     const region = try rows.text();
///     const cents = try rows.int();
/// }
/// ```
///
/// A batch is an array of rows (the host writes it with indefinite length), each an array of
/// cells. Text and blobs point into the current batch: copy what must outlive the next `next`.
pub const Rows = struct {
    cursor: u32,
    batch: std.ArrayList(u8) = .empty,
    reader: Reader = .{ .bytes = &.{} },
    /// The rows left in the current batch.
    rows: Seq = .{ .left = 0 },
    /// The cells left in the current row.
    cells: Seq = .{ .left = 0 },
    done: bool = false,
    /// Rows read so far, to name one that does not decode.
    count: u64 = 0,

    /// Moves to the next row; false when there are no more.
    pub fn next(self: *Rows) !bool {
        // Whatever the caller left unread of the row before.
        while (try self.cells.next(&self.reader)) try self.reader.skip();
        while (true) {
            if (try self.rows.next(&self.reader)) {
                self.count += 1;
                self.cells = self.reader.array() catch |e| return rowError(e, self.count);
                return true;
            }
            if (self.done) return false;
            const n = try check(host.cursor_next(self.cursor), "cursor_next");
            if (n == 0) {
                self.done = true;
                return false;
            }
            try self.batch.resize(scratch(), n);
            host.cursor_read(self.cursor, addr(self.batch.items));
            self.reader = .{ .bytes = self.batch.items };
            self.rows = try self.reader.array();
        }
    }

    fn cell(self: *Rows) !*Reader {
        if (!try self.cells.next(&self.reader)) return invalid("row {d} has fewer columns than were read", .{self.count});
        return &self.reader;
    }

    /// The next cell of the row, as text.
    pub fn text(self: *Rows) ![]const u8 {
        return (try self.cell()).text() catch |e| return rowError(e, self.count);
    }

    /// The next cell, as an integer.
    pub fn int(self: *Rows) !i64 {
        return (try self.cell()).int() catch |e| return rowError(e, self.count);
    }

    /// The next cell, as a float (an integer cell is converted).
    pub fn real(self: *Rows) !f64 {
        return (try self.cell()).number() catch |e| return rowError(e, self.count);
    }

    /// The next cell, whatever its type.
    pub fn value(self: *Rows) !Value {
        return (try self.cell()).value() catch |e| return rowError(e, self.count);
    }

    /// Releases the cursor.
    pub fn close(self: *Rows) void {
        host.cursor_close(self.cursor);
    }
};

fn rowError(err: anyerror, row: u64) anyerror {
    var copy: [detail_buf.len]u8 = undefined;
    const was = copy[0..detail_len];
    @memcpy(was, detail_buf[0..detail_len]);
    explain("row {d}: {s}", .{ row, was });
    return err;
}

/// A log resource, opened for this call only.
pub const Log = struct {
    handle: u32,

    /// Opens the log `name` (needs the capability `log:NAME`).
    pub fn open(name: []const u8) HostError!Log {
        return .{ .handle = try check(host.resource_open(addr(name), len32(name)), "resource_open") };
    }

    /// Appends one line (at most 4096 bytes of UTF-8).
    pub fn append(self: Log, line: []const u8) HostError!void {
        _ = try check(host.log_append(self.handle, addr(line), len32(line)), "log_append");
    }
};

// ---------------------------------------------------------------------------------------------
// CBOR (RFC 8949), as roam uses it

/// Writes CBOR the way the host and the Rust SDK do (ciborium): shortest heads, definite
/// lengths unless asked otherwise, floats in the shortest width that keeps their value.
pub const Writer = struct {
    buf: std.ArrayList(u8) = .empty,
    gpa: Allocator,

    pub fn init(gpa: Allocator) Writer {
        return .{ .gpa = gpa };
    }

    /// What was written so far.
    pub fn written(w: *const Writer) []const u8 {
        return w.buf.items;
    }

    fn put(w: *Writer, encoded: []const u8) !void {
        try w.buf.appendSlice(w.gpa, encoded);
    }

    fn byte(w: *Writer, b: u8) !void {
        try w.buf.append(w.gpa, b);
    }

    fn bigEndian(w: *Writer, comptime T: type, v: T) !void {
        var b: [@sizeOf(T)]u8 = undefined;
        std.mem.writeInt(T, &b, v, .big);
        try w.put(&b);
    }

    /// An item's head: major type and argument, in the shortest form.
    fn head(w: *Writer, major: u3, arg: u64) !void {
        const m = @as(u8, major) << 5;
        if (arg < 24) {
            try w.byte(m | @as(u8, @intCast(arg)));
        } else if (arg <= 0xff) {
            try w.byte(m | 24);
            try w.byte(@intCast(arg));
        } else if (arg <= 0xffff) {
            try w.byte(m | 25);
            try w.bigEndian(u16, @intCast(arg));
        } else if (arg <= 0xffff_ffff) {
            try w.byte(m | 26);
            try w.bigEndian(u32, @intCast(arg));
        } else {
            try w.byte(m | 27);
            try w.bigEndian(u64, arg);
        }
    }

    pub fn uint(w: *Writer, v: u64) !void {
        try w.head(0, v);
    }

    pub fn int(w: *Writer, v: i64) !void {
        // A negative n is major type 1 with argument -1 - n, which is !n in two's complement.
        if (v >= 0) try w.head(0, @intCast(v)) else try w.head(1, ~@as(u64, @bitCast(v)));
    }

    pub fn text(w: *Writer, s: []const u8) !void {
        try w.head(3, s.len);
        try w.put(s);
    }

    pub fn bytes(w: *Writer, b: []const u8) !void {
        try w.head(2, b.len);
        try w.put(b);
    }

    /// An array of `n` items: write them next.
    pub fn array(w: *Writer, n: u64) !void {
        try w.head(4, n);
    }

    /// A map of `n` pairs: write key, value, key, value...
    pub fn map(w: *Writer, n: u64) !void {
        try w.head(5, n);
    }

    /// An array of indefinite length: write its items, then `end`.
    pub fn beginArray(w: *Writer) !void {
        try w.byte(0x9f);
    }

    /// A map of indefinite length: write its pairs, then `end`.
    pub fn beginMap(w: *Writer) !void {
        try w.byte(0xbf);
    }

    /// The break that ends an indefinite-length array or map.
    pub fn end(w: *Writer) !void {
        try w.byte(0xff);
    }

    pub fn tag(w: *Writer, t: u64) !void {
        try w.head(6, t);
    }

    pub fn boolean(w: *Writer, b: bool) !void {
        try w.byte(if (b) 0xf5 else 0xf4);
    }

    pub fn nil(w: *Writer) !void {
        try w.byte(0xf6);
    }

    /// A float in the shortest of half, single and double precision that keeps its value
    /// exactly, as ciborium writes it (1.5 is f9 3e00, 0.1 needs all of fb ...).
    pub fn float(w: *Writer, v: f64) !void {
        if (std.math.isNan(v)) return w.put(&.{ 0xf9, 0x7e, 0x00 });
        const single: f32 = @floatCast(v);
        if (@as(f64, single) != v) {
            try w.byte(0xfb);
            return w.bigEndian(u64, @bitCast(v));
        }
        const half: f16 = @floatCast(single);
        if (@as(f32, half) != single) {
            try w.byte(0xfa);
            return w.bigEndian(u32, @bitCast(single));
        }
        try w.byte(0xf9);
        try w.bigEndian(u16, @bitCast(half));
    }

    /// An item that is already CBOR.
    pub fn raw(w: *Writer, encoded: []const u8) !void {
        try w.put(encoded);
    }

    /// A SQL value, as the host reads parameters.
    pub fn value(w: *Writer, v: Value) !void {
        switch (v) {
            .nil => try w.nil(),
            .integer => |i| try w.int(i),
            .real => |f| try w.float(f),
            .text => |s| try w.text(s),
            .blob => |b| try w.bytes(b),
        }
    }
};

/// Items left in an array or map being read: a count, or `null` for indefinite length, which
/// ends at a break byte.
pub const Seq = struct {
    left: ?u64,

    /// Whether another item (for a map, another key and value) follows. At the end of an
    /// indefinite-length one, consumes its break.
    pub fn next(s: *Seq, r: *Reader) !bool {
        if (s.left) |*n| {
            if (n.* == 0) return false;
            n.* -= 1;
            return true;
        }
        const b = try r.peek();
        if (b == 0xff) {
            r.pos += 1;
            return false;
        }
        return true;
    }
};

/// The kinds of CBOR item, for a reader that must decide what comes next.
pub const Kind = enum { uint, negint, bytes, text, array, map, tag, float, boolean, nil, other };

/// Reads CBOR from a buffer, one item at a time. Text and byte strings are returned as slices
/// of the buffer (definite length only: roam never writes chunked strings). Tags before an item
/// read as a typed value are skipped, as ciborium does.
pub const Reader = struct {
    bytes: []const u8,
    pos: usize = 0,

    pub const Error = error{ Truncated, Malformed, UnexpectedType, OutOfRange, TooDeep, Invalid };

    /// Deepest nesting `skip` follows, as ciborium's decoder allows.
    const max_depth = 256;

    const Head = struct { major: u3, info: u5, arg: u64 };

    fn peek(r: *Reader) Error!u8 {
        if (r.pos >= r.bytes.len) return r.truncated();
        return r.bytes[r.pos];
    }

    fn truncated(r: *Reader) Error {
        explain("CBOR ends early at byte {d}", .{r.pos});
        return error.Truncated;
    }

    fn take(r: *Reader, n: u64) Error![]const u8 {
        if (n > r.bytes.len - r.pos) return r.truncated();
        const s = r.bytes[r.pos..][0..@intCast(n)];
        r.pos += @intCast(n);
        return s;
    }

    fn head(r: *Reader) Error!Head {
        const first = try r.peek();
        r.pos += 1;
        const h: Head = .{ .major = @intCast(first >> 5), .info = @intCast(first & 0x1f), .arg = 0 };
        const width: u64 = switch (h.info) {
            0...23 => return .{ .major = h.major, .info = h.info, .arg = h.info },
            24 => 1,
            25 => 2,
            26 => 4,
            27 => 8,
            // Indefinite length (or a break); `arg` has no meaning.
            31 => return h,
            else => {
                explain("reserved CBOR head 0x{x:0>2} at byte {d}", .{ first, r.pos - 1 });
                return error.Malformed;
            },
        };
        var arg: u64 = 0;
        for (try r.take(width)) |b| arg = arg << 8 | b;
        return .{ .major = h.major, .info = h.info, .arg = arg };
    }

    /// The next head, after any tags.
    fn typedHead(r: *Reader) Error!Head {
        while (true) {
            const h = try r.head();
            if (h.major != 6) return h;
        }
    }

    fn unexpected(r: *Reader, want: []const u8, h: Head) Error {
        explain("expected {s} at byte {d}, found CBOR major type {d} (info {d})", .{ want, r.pos, h.major, h.info });
        return error.UnexpectedType;
    }

    /// What the next item is, without reading it (tags are not skipped: they are `.tag`).
    pub fn kind(r: *Reader) Error!Kind {
        const b = try r.peek();
        return switch (b >> 5) {
            0 => .uint,
            1 => .negint,
            2 => .bytes,
            3 => .text,
            4 => .array,
            5 => .map,
            6 => .tag,
            else => switch (b) {
                0xf4, 0xf5 => .boolean,
                0xf6, 0xf7 => .nil,
                0xf9, 0xfa, 0xfb => .float,
                else => .other,
            },
        };
    }

    pub fn uint(r: *Reader) Error!u64 {
        const h = try r.typedHead();
        if (h.major != 0 or h.info == 31) return r.unexpected("an unsigned integer", h);
        return h.arg;
    }

    pub fn int(r: *Reader) Error!i64 {
        const h = try r.typedHead();
        if ((h.major != 0 and h.major != 1) or h.info == 31) return r.unexpected("an integer", h);
        if (h.arg > std.math.maxInt(i64)) {
            explain("integer at byte {d} is out of the range of i64", .{r.pos});
            return error.OutOfRange;
        }
        const n: i64 = @intCast(h.arg);
        return if (h.major == 0) n else -1 - n;
    }

    /// An unsigned integer that must fit `T`.
    pub fn uintAs(r: *Reader, comptime T: type) Error!T {
        const v = try r.uint();
        return std.math.cast(T, v) orelse {
            explain("{d} is out of the range of {s}", .{ v, @typeName(T) });
            return error.OutOfRange;
        };
    }

    pub fn float(r: *Reader) Error!f64 {
        const h = try r.typedHead();
        if (h.major != 7) return r.unexpected("a float", h);
        switch (h.info) {
            25 => {
                const half: f16 = @bitCast(@as(u16, @intCast(h.arg)));
                return half;
            },
            26 => {
                const single: f32 = @bitCast(@as(u32, @intCast(h.arg)));
                return single;
            },
            27 => {
                const double: f64 = @bitCast(h.arg);
                return double;
            },
            else => return r.unexpected("a float", h),
        }
    }

    /// An integer or a float, as a float.
    pub fn number(r: *Reader) Error!f64 {
        switch (try r.kind()) {
            .uint, .negint => {
                const n: f64 = @floatFromInt(try r.int());
                return n;
            },
            else => return r.float(),
        }
    }

    pub fn boolean(r: *Reader) Error!bool {
        const h = try r.typedHead();
        if (h.major == 7 and (h.info == 20 or h.info == 21)) return h.info == 21;
        return r.unexpected("a boolean", h);
    }

    /// Consumes a null (or undefined) if one is next; says whether it did.
    pub fn nil(r: *Reader) Error!bool {
        const b = try r.peek();
        if (b != 0xf6 and b != 0xf7) return false;
        r.pos += 1;
        return true;
    }

    fn string(r: *Reader, major: u3, want: []const u8) Error![]const u8 {
        const h = try r.typedHead();
        if (h.major != major) return r.unexpected(want, h);
        if (h.info == 31) {
            explain("{s} of indefinite length at byte {d} is not supported", .{ want, r.pos });
            return error.UnexpectedType;
        }
        return r.take(h.arg);
    }

    /// A text string (UTF-8 checked).
    pub fn text(r: *Reader) Error![]const u8 {
        const s = try r.string(3, "a text string");
        if (!std.unicode.utf8ValidateSlice(s)) {
            explain("text before byte {d} is not UTF-8", .{r.pos});
            return error.Malformed;
        }
        return s;
    }

    /// A byte string.
    pub fn bytes_(r: *Reader) Error![]const u8 {
        return r.string(2, "a byte string");
    }

    /// The head of an array: iterate its items with `Seq.next`.
    pub fn array(r: *Reader) Error!Seq {
        const h = try r.typedHead();
        if (h.major != 4) return r.unexpected("an array", h);
        return .{ .left = if (h.info == 31) null else h.arg };
    }

    /// The head of a map: `Seq.next` before each key and value.
    pub fn map(r: *Reader) Error!Seq {
        const h = try r.typedHead();
        if (h.major != 5) return r.unexpected("a map", h);
        return .{ .left = if (h.info == 31) null else h.arg };
    }

    /// A SQL value (roam_abi::Value): null, integer, float, text or bytes; booleans read as
    /// 0 and 1, as the host reads them.
    pub fn value(r: *Reader) Error!Value {
        return switch (try r.kind()) {
            .nil => blk: {
                r.pos += 1;
                break :blk .nil;
            },
            .uint, .negint => .{ .integer = try r.int() },
            .boolean => .{ .integer = @intFromBool(try r.boolean()) },
            .float => .{ .real = try r.float() },
            .text => .{ .text = try r.text() },
            .bytes => .{ .blob = try r.bytes_() },
            .tag => blk: {
                _ = try r.head();
                break :blk r.value();
            },
            else => blk: {
                const h = try r.head();
                break :blk r.unexpected("null, an integer, a float, a text string or a byte string", h);
            },
        };
    }

    /// Skips one whole item, however nested.
    pub fn skip(r: *Reader) Error!void {
        return r.skipDepth(0);
    }

    fn skipDepth(r: *Reader, depth: usize) Error!void {
        if (depth > max_depth) {
            explain("CBOR nested deeper than {d} levels", .{max_depth});
            return error.TooDeep;
        }
        const h = try r.head();
        switch (h.major) {
            0, 1 => {},
            2, 3 => if (h.info == 31) {
                // Chunks of a string of indefinite length, up to the break.
                while (try r.peek() != 0xff) try r.skipDepth(depth + 1);
                r.pos += 1;
            } else {
                _ = try r.take(h.arg);
            },
            4, 5 => {
                var s: Seq = .{ .left = if (h.info == 31) null else h.arg };
                const per = @as(u8, if (h.major == 5) 2 else 1);
                while (try s.next(r)) {
                    for (0..per) |_| try r.skipDepth(depth + 1);
                }
            },
            6 => try r.skipDepth(depth + 1),
            7 => if (h.info == 31) {
                explain("unexpected break at byte {d}", .{r.pos - 1});
                return error.Malformed;
            },
        }
    }
};

// ---------------------------------------------------------------------------------------------
// Queries

/// Runs `body(input, output)` as the call of a query (or code) module: `input` reads the
/// caller's CBOR input, and what `body` writes to `output` is the result. An error from `body`
/// fails the call with the error's name and what `explain` said. Export it as `roam_query`.
pub fn query(comptime body: anytype) void {
    begin();
    defer end();
    var input: Reader = .{ .bytes = readInput() catch |e| return fail(e) };
    var out = Writer.init(scratch());
    body(&input, &out) catch |e| return fail(e);
    succeed(out.written());
}

/// Reads the text keys of a map one at a time: `while (try keys.next()) |key| { ... read its
/// value ... }`.
pub const Keys = struct {
    reader: *Reader,
    seq: Seq,

    pub fn of(r: *Reader) Reader.Error!Keys {
        return .{ .reader = r, .seq = try r.map() };
    }

    pub fn next(k: *Keys) Reader.Error!?[]const u8 {
        if (!try k.seq.next(k.reader)) return null;
        return try k.reader.text();
    }
};

// ---------------------------------------------------------------------------------------------
// Agents

/// What an agent does after `start` or `arrive` (roam_abi::Next).
pub const Next = union(enum) {
    /// Move to `host` (a peer's name or address), or to the first of `alternates` reachable.
    go: struct { host: []const u8, alternates: []const []const u8 = &.{} },
    /// Travel home and finish there with this result (CBOR; empty for none).
    home: []const u8,
    /// Finish here with this result (CBOR), which is reported home.
    finish: []const u8,

    /// As the host decodes it: `{"Go": {"host": H, "alternates": [...]}}`,
    /// `{"Home": {"result": h'CBOR'}}` or `{"Finish": {"result": h'CBOR'}}`. Variant names are
    /// case-sensitive, `alternates` is required, and a result is a byte string that wraps the
    /// result's own CBOR.
    pub fn encode(n: Next, w: *Writer) !void {
        try w.map(1);
        switch (n) {
            .go => |go| {
                try w.text("Go");
                try w.map(2);
                try w.text("host");
                try w.text(go.host);
                try w.text("alternates");
                try w.array(go.alternates.len);
                for (go.alternates) |a| try w.text(a);
            },
            .home, .finish => |result| {
                try w.text(if (n == .home) "Home" else "Finish");
                try w.map(1);
                try w.text("result");
                try w.bytes(result);
            },
        }
    }
};

/// How a host binds a declared resource on arrival (roam_abi::Binding).
pub const Binding = enum { identifier, value, type };

/// One resource an agent declares in its manifest.
pub const ResourceDecl = struct {
    name: []const u8,
    kind: enum { table, log },
    binding: Binding,
};

/// What a host did with a declared resource (roam_abi::Action).
pub const Action = enum { mv, gr, cp, rb, unbound };

pub const Bound = struct {
    name: []const u8,
    action: Action,
    /// Why it could not be bound, if it was not.
    err: ?[]const u8,
};

/// What an agent learns when it arrives on a host (roam_abi::Arrival). Its strings point into
/// the call's input: copy what the agent keeps to `heap`.
pub const Arrival = struct {
    /// This host's name.
    host: []const u8,
    /// The address this host listens on.
    address: []const u8,
    /// Hops made so far: 1 on the first host after home.
    hop: u32,
    bindings: []const Bound,
    /// Destinations that could not be reached on the way here.
    unreachable_: []const []const u8,

    fn decode(r: *Reader) !Arrival {
        var a: Arrival = .{ .host = "", .address = "", .hop = 0, .bindings = &.{}, .unreachable_ = &.{} };
        var seen: u8 = 0;
        var keys = try Keys.of(r);
        while (try keys.next()) |key| {
            if (eql(key, "host")) {
                a.host = try r.text();
                seen |= 1;
            } else if (eql(key, "address")) {
                a.address = try r.text();
                seen |= 2;
            } else if (eql(key, "hop")) {
                a.hop = try r.uintAs(u32);
                seen |= 4;
            } else if (eql(key, "bindings")) {
                var list: std.ArrayList(Bound) = .empty;
                var items = try r.array();
                while (try items.next(r)) try list.append(scratch(), try decodeBound(r));
                a.bindings = list.items;
                seen |= 8;
            } else if (eql(key, "unreachable")) {
                var list: std.ArrayList([]const u8) = .empty;
                var items = try r.array();
                while (try items.next(r)) try list.append(scratch(), try r.text());
                a.unreachable_ = list.items;
                seen |= 16;
            } else {
                // Unknown keys are ignored, as the host's own decoder does.
                try r.skip();
            }
        }
        if (seen != 31) return invalid("the arrival lacks a field (has mask {b:0>5})", .{seen});
        return a;
    }
};

fn decodeBound(r: *Reader) !Bound {
    var b: Bound = .{ .name = "", .action = .unbound, .err = null };
    var keys = try Keys.of(r);
    while (try keys.next()) |key| {
        if (eql(key, "name")) {
            b.name = try r.text();
        } else if (eql(key, "action")) {
            const name = try r.text();
            b.action = std.meta.stringToEnum(Action, name) orelse return invalid("unknown action {s}", .{name});
        } else if (eql(key, "error")) {
            b.err = if (try r.nil()) null else try r.text();
        } else {
            try r.skip();
        }
    }
    return b;
}

fn eql(a: []const u8, b: []const u8) bool {
    return std.mem.eql(u8, a, b);
}

fn decide(next: anyerror!Next) void {
    const n = next catch |e| return fail(e);
    var w = Writer.init(scratch());
    n.encode(&w) catch |e| return fail(e);
    succeed(w.written());
}

/// Runs `body(input)` as `roam_agent_start`: once, on the home host, with the launch input.
/// It returns where to go first.
pub fn agentStart(comptime body: anytype) void {
    begin();
    defer end();
    var input: Reader = .{ .bytes = readInput() catch |e| return fail(e) };
    decide(body(&input));
}

/// Runs `body(arrival)` as `roam_agent_arrive`, on every host the agent reaches, after the
/// host restored its memory (so its state is as it left the last host).
pub fn agentArrive(comptime body: anytype) void {
    begin();
    defer end();
    var input: Reader = .{ .bytes = readInput() catch |e| return fail(e) };
    const arrival = Arrival.decode(&input) catch |e| return fail(e);
    decide(body(&arrival));
}

/// Runs `body()` as `roam_agent_depart`, just before the agent leaves a host (in the same
/// instance as the entry that decided to leave). Its outcome is not the agent's decision, so
/// an error is only logged.
pub fn agentDepart(comptime body: anytype) void {
    begin();
    defer end();
    body() catch |e| logf(.warn, "depart failed: {s}: {s}", .{ @errorName(e), detail_buf[0..detail_len] });
}

/// Runs `body(out)` as `roam_agent_recall`, at home, when the agent was recalled: what it
/// writes to `out` (CBOR, or nothing at all) is its partial result.
pub fn agentRecall(comptime body: anytype) void {
    begin();
    defer end();
    var out = Writer.init(scratch());
    body(&out) catch |e| return fail(e);
    succeed(out.written());
}

/// Reports `resources` as `roam_agent_manifest`: `{"resources": [{"name", "kind",
/// "binding"}, ...]}`. The host runs it on a fresh instance whenever it loads the code.
pub fn agentManifest(resources: []const ResourceDecl) void {
    begin();
    defer end();
    var w = Writer.init(scratch());
    encodeManifest(&w, resources) catch |e| return fail(e);
    succeed(w.written());
}

fn encodeManifest(w: *Writer, resources: []const ResourceDecl) !void {
    try w.map(1);
    try w.text("resources");
    try w.array(resources.len);
    for (resources) |res| {
        try w.map(3);
        try w.text("name");
        try w.text(res.name);
        try w.text("kind");
        try w.text(@tagName(res.kind));
        try w.text("binding");
        try w.text(@tagName(res.binding));
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: the byte-level examples of sdk/ABI.md, so that this codec and the host's agree byte
// for byte. `cargo xtask agents` runs them natively before it builds the modules:
// `python3 -m ziglang test roam.zig -fsingle-threaded` (single-threaded: `heap` is Zig's
// allocator for single-threaded WebAssembly, which is also the one for single-threaded Linux).

const testing = std.testing;

/// Bytes from hex digits, spaces ignored, as sdk/ABI.md writes them.
fn unhex(buf: []u8, text: []const u8) ![]const u8 {
    var n: usize = 0;
    var i: usize = 0;
    while (i < text.len) {
        if (text[i] == ' ') {
            i += 1;
            continue;
        }
        buf[n] = try std.fmt.parseInt(u8, text[i..][0..2], 16);
        n += 1;
        i += 2;
    }
    return buf[0..n];
}

fn expectWritten(w: *const Writer, hex: []const u8) !void {
    var buf: [256]u8 = undefined;
    try testing.expectEqualSlices(u8, try unhex(&buf, hex), w.written());
}

test "Next as the host decodes it (ABI.md 3.6)" {
    const cases = [_]struct { next: Next, hex: []const u8 }{
        .{ .next = .{ .go = .{ .host = "d1" } }, .hex = "a1 62 476f a2 64 686f7374 62 6431 6a 616c7465726e61746573 80" },
        .{ .next = .{ .go = .{ .host = "d1", .alternates = &.{"d2"} } }, .hex = "a1 62 476f a2 64 686f7374 62 6431 6a 616c7465726e61746573 81 62 6432" },
        .{ .next = .{ .home = &.{0x07} }, .hex = "a1 64 486f6d65 a1 66 726573756c74 41 07" },
        .{ .next = .{ .finish = "\x62ok" }, .hex = "a1 66 46696e697368 a1 66 726573756c74 43 626f6b" },
    };
    for (cases) |case| {
        var w = Writer.init(testing.allocator);
        defer w.buf.deinit(testing.allocator);
        try case.next.encode(&w);
        try expectWritten(&w, case.hex);
    }
}

test "Manifest (ABI.md 3.7)" {
    var w = Writer.init(testing.allocator);
    defer w.buf.deinit(testing.allocator);
    try encodeManifest(&w, &.{});
    try expectWritten(&w, "a1 69 7265736f7572636573 80");
    w.buf.clearRetainingCapacity();
    try encodeManifest(&w, &.{.{ .name = "stock", .kind = .table, .binding = .type }});
    try expectWritten(&w, "a1 69 7265736f7572636573 81 a3 64 6e616d65 65 73746f636b 64 6b696e64 65 7461626c65 67 62696e64696e67 64 74797065");
}

test "Arrival (ABI.md 3.8)" {
    var buf: [256]u8 = undefined;
    var r: Reader = .{ .bytes = try unhex(&buf, "a5 64 686f7374 62 6431 67 61646472657373 6e 3132372e302e302e313a37373031 63 686f70 01 68 62696e64696e6773 81 a3 64 6e616d65 65 73746f636b 66 616374696f6e 62 7262 65 6572726f72 f6 6b 756e726561636861626c65 80") };
    const a = try Arrival.decode(&r);
    try testing.expectEqualStrings("d1", a.host);
    try testing.expectEqualStrings("127.0.0.1:7701", a.address);
    try testing.expectEqual(@as(u32, 1), a.hop);
    try testing.expectEqual(@as(usize, 1), a.bindings.len);
    try testing.expectEqualStrings("stock", a.bindings[0].name);
    try testing.expectEqual(Action.rb, a.bindings[0].action);
    try testing.expectEqual(@as(?[]const u8, null), a.bindings[0].err);
    try testing.expectEqual(@as(usize, 0), a.unreachable_.len);
    try testing.expectEqual(r.bytes.len, r.pos);

    var unbound: Reader = .{ .bytes = try unhex(&buf, "a3 64 6e616d65 63 636667 66 616374696f6e 67 756e626f756e64 65 6572726f72 62 6e6f") };
    const b = try decodeBound(&unbound);
    try testing.expectEqual(Action.unbound, b.action);
    try testing.expectEqualStrings("no", b.err.?);
}

test "query parameters and values (ABI.md 3.2, 3.4)" {
    var w = Writer.init(testing.allocator);
    defer w.buf.deinit(testing.allocator);
    try w.array(2);
    try w.value(.{ .integer = 2 });
    try w.value(.{ .text = "north" });
    try expectWritten(&w, "82 02 65 6e6f727468");
    w.buf.clearRetainingCapacity();
    try w.array(4);
    for ([_]Value{ .nil, .{ .integer = -1 }, .{ .real = 1.5 }, .{ .blob = &.{ 1, 2 } } }) |v| try w.value(v);
    try expectWritten(&w, "84 f6 20 f9 3e00 42 0102");

    var buf: [16]u8 = undefined;
    var r: Reader = .{ .bytes = try unhex(&buf, "39 012b") };
    try testing.expectEqual(Value{ .integer = -300 }, try r.value());
    r = .{ .bytes = try unhex(&buf, "62 6869") };
    try testing.expectEqualStrings("hi", (try r.value()).text);
    r = .{ .bytes = try unhex(&buf, "42 6869") };
    try testing.expectEqualStrings("hi", (try r.value()).blob);
    r = .{ .bytes = try unhex(&buf, "f5") };
    try testing.expectEqual(Value{ .integer = 1 }, try r.value());
}

test "batches of rows, indefinite length (ABI.md 3.3)" {
    var buf: [64]u8 = undefined;
    var r: Reader = .{ .bytes = try unhex(&buf, "9f 82 65 6e6f727468 03 82 65 736f757468 24 ff") };
    var rows = try r.array();
    try testing.expectEqual(@as(?u64, null), rows.left);
    const want = [_]struct { []const u8, i64 }{ .{ "north", 3 }, .{ "south", -5 } };
    var n: usize = 0;
    while (try rows.next(&r)) : (n += 1) {
        var cells = try r.array();
        try testing.expect(try cells.next(&r));
        try testing.expectEqualStrings(want[n][0], try r.text());
        try testing.expect(try cells.next(&r));
        try testing.expectEqual(want[n][1], try r.int());
        try testing.expect(!try cells.next(&r));
    }
    try testing.expectEqual(@as(usize, 2), n);
    try testing.expectEqual(r.bytes.len, r.pos);

    // The ff inside the blob is data, not the break.
    r = .{ .bytes = try unhex(&buf, "9f 83 fb 3ff8000000000000 f6 41 ff ff") };
    rows = try r.array();
    try testing.expect(try rows.next(&r));
    var cells = try r.array();
    try testing.expect(try cells.next(&r));
    try testing.expectEqual(@as(f64, 1.5), try r.number());
    try testing.expect(try cells.next(&r));
    try testing.expectEqual(Value.nil, try r.value());
    try testing.expect(try cells.next(&r));
    try testing.expectEqualSlices(u8, &.{0xff}, try r.bytes_());
    try testing.expect(!try cells.next(&r));
    try testing.expect(!try rows.next(&r));
    try testing.expectEqual(r.bytes.len, r.pos);
}

test "input from JSON: sorted keys, half floats, skipping (ABI.md 3.1)" {
    var buf: [32]u8 = undefined;
    var r: Reader = .{ .bytes = try unhex(&buf, "a2 61 62 83 f5 f6 20 61 78 f9 3c00") };
    var keys = try Keys.of(&r);
    try testing.expectEqualStrings("b", (try keys.next()).?);
    var items = try r.array();
    try testing.expect(try items.next(&r));
    try testing.expect(try r.boolean());
    try testing.expect(try items.next(&r));
    try testing.expect(try r.nil());
    try testing.expect(try items.next(&r));
    try testing.expectEqual(@as(i64, -1), try r.int());
    try testing.expect(!try items.next(&r));
    try testing.expectEqualStrings("x", (try keys.next()).?);
    try testing.expectEqual(@as(f64, 1.0), try r.number());
    try testing.expectEqual(@as(?[]const u8, null), try keys.next());

    r.pos = 0;
    try r.skip();
    try testing.expectEqual(r.bytes.len, r.pos);
}

test "integers and floats in their shortest form, as ciborium writes them" {
    var w = Writer.init(testing.allocator);
    defer w.buf.deinit(testing.allocator);
    const ints = [_]struct { i64, []const u8 }{
        .{ 0, "00" },
        .{ 23, "17" },
        .{ 24, "18 18" },
        .{ 256, "19 0100" },
        .{ 65536, "1a 00010000" },
        .{ 1 << 32, "1b 0000000100000000" },
        .{ -1, "20" },
        .{ -300, "39 012b" },
        .{ std.math.maxInt(i64), "1b 7fffffffffffffff" },
        .{ std.math.minInt(i64), "3b 7fffffffffffffff" },
    };
    var buf: [16]u8 = undefined;
    for (ints) |case| {
        w.buf.clearRetainingCapacity();
        try w.int(case[0]);
        try expectWritten(&w, case[1]);
        var r: Reader = .{ .bytes = w.written() };
        try testing.expectEqual(case[0], try r.int());
    }
    const floats = [_]struct { f64, []const u8 }{
        .{ 1.5, "f9 3e00" },
        .{ 1.0, "f9 3c00" },
        .{ -0.0, "f9 8000" },
        .{ 100000.0, "fa 47c35000" },
        .{ 0.1, "fb 3fb999999999999a" },
    };
    for (floats) |case| {
        w.buf.clearRetainingCapacity();
        try w.float(case[0]);
        try expectWritten(&w, case[1]);
        var r: Reader = .{ .bytes = try unhex(&buf, case[1]) };
        try testing.expectEqual(case[0], try r.float());
    }
}

test "malformed CBOR is an error, never a crash" {
    var buf: [16]u8 = undefined;
    var r: Reader = .{ .bytes = try unhex(&buf, "62 68") };
    try testing.expectError(error.Truncated, r.text());
    r = .{ .bytes = try unhex(&buf, "1c") };
    try testing.expectError(error.Malformed, r.skip());
    r = .{ .bytes = try unhex(&buf, "1b ffffffffffffffff") };
    try testing.expectError(error.OutOfRange, r.int());
    r = .{ .bytes = try unhex(&buf, "7b 7fffffffffffffff") };
    try testing.expectError(error.Truncated, r.skip());
    r = .{ .bytes = try unhex(&buf, "a1 01") };
    var keys = try Keys.of(&r);
    try testing.expectError(error.UnexpectedType, keys.next());
    r = .{ .bytes = try unhex(&buf, "ff") };
    try testing.expectError(error.Malformed, r.skip());
    var deep: [301]u8 = @splat(0x81);
    deep[300] = 0x00;
    r = .{ .bytes = &deep };
    try testing.expectError(error.TooDeep, r.skip());
}
