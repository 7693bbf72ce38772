const roam = @import("roam.zig");
pub const panic = roam.panic;

/// The number of rows of the sales table.
export fn roam_query() void {
    roam.query(run);
}

fn run(_: *roam.Reader, out: *roam.Writer) !void {
    const sales = try roam.Table.open("sales"); // needs the capability table:sales
    var rows = try sales.query("SELECT id FROM sales", &.{});
    defer rows.close();
    var n: u64 = 0;
    while (try rows.next()) n += 1;
    try out.uint(n);
}
