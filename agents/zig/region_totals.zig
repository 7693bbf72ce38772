//! A query module in Zig: the host's `sales` table totalled by region, next to the data, as
//! the Rust example sales-by-region does, with units sold as well. Built by `cargo xtask
//! agents` into agents/target/zig/region_totals.wasm; after `cargo xtask demo`, sign it as a
//! query with the capability `table:sales` and run it with
//! `roam eval region_totals.signed.wasm --host 127.0.0.1:7700 --input '{"min_quantity": 2}'`.
//!
//! Input (every field may be left out): `{"min_quantity": 1, "from_day": 1, "to_day": 365}`.
//! Result: `{"regions": [{"region", "orders", "units", "total_cents", "mean_cents"}, ...]}`,
//! sorted by region name.

const std = @import("std");
const roam = @import("roam.zig");

pub const panic = roam.panic;

export fn roam_query() void {
    roam.query(run);
}

const Input = struct {
    min_quantity: u32 = 1,
    from_day: u32 = 1,
    to_day: u32 = 365,
};

const Region = struct {
    /// Copied out of the batch it came in, which the next batch replaces.
    name: []const u8,
    orders: u64 = 0,
    units: i64 = 0,
    total_cents: i64 = 0,

    fn lessThan(_: void, a: Region, b: Region) bool {
        return std.mem.lessThan(u8, a.name, b.name);
    }
};

fn readInput(r: *roam.Reader) !Input {
    var input: Input = .{};
    var keys = try roam.Keys.of(r);
    while (try keys.next()) |key| {
        if (std.mem.eql(u8, key, "min_quantity")) {
            input.min_quantity = try r.uintAs(u32);
        } else if (std.mem.eql(u8, key, "from_day")) {
            input.from_day = try r.uintAs(u32);
        } else if (std.mem.eql(u8, key, "to_day")) {
            input.to_day = try r.uintAs(u32);
        } else {
            // Refused rather than ignored, so that a misspelt filter is not silently a query
            // over everything.
            return roam.invalid("unknown input field {s}; expected min_quantity, from_day or to_day", .{key});
        }
    }
    return input;
}

fn run(in: *roam.Reader, out: *roam.Writer) !void {
    const input = try readInput(in);
    const gpa = roam.scratch();

    const sales = try roam.Table.open("sales");
    var rows = try sales.query(
        "SELECT region, quantity, amount_cents FROM sales WHERE quantity >= ?1 AND day BETWEEN ?2 AND ?3",
        &.{ .{ .integer = input.min_quantity }, .{ .integer = input.from_day }, .{ .integer = input.to_day } },
    );
    defer rows.close();

    // A handful of regions: a linear search beats a hash map at this size.
    var regions: std.ArrayList(Region) = .empty;
    var count: u64 = 0;
    while (try rows.next()) {
        const name = try rows.text();
        const quantity = try rows.int();
        const cents = try rows.int();
        const region = for (regions.items) |*reg| {
            if (std.mem.eql(u8, reg.name, name)) break reg;
        } else blk: {
            try regions.append(gpa, .{ .name = try gpa.dupe(u8, name) });
            break :blk &regions.items[regions.items.len - 1];
        };
        region.orders += 1;
        region.units += quantity;
        region.total_cents += cents;
        count += 1;
    }
    roam.logf(.info, "region-totals (zig): {d} matching sales", .{count});

    std.mem.sort(Region, regions.items, {}, Region.lessThan);
    try out.map(1);
    try out.text("regions");
    try out.array(regions.items.len);
    for (regions.items) |reg| {
        try out.map(5);
        try out.text("region");
        try out.text(reg.name);
        try out.text("orders");
        try out.uint(reg.orders);
        try out.text("units");
        try out.int(reg.units);
        try out.text("total_cents");
        try out.int(reg.total_cents);
        try out.text("mean_cents");
        const total: f64 = @floatFromInt(reg.total_cents);
        const orders: f64 = @floatFromInt(reg.orders);
        try out.float(total / orders);
    }
}
