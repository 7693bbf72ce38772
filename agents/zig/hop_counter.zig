//! A mobile agent in Zig whose state must survive every hop: it counts its arrivals and
//! departures, records each host it reached on the heap, and brings it all home with a
//! checksum, like the Rust agent hop-counter. Built by `cargo xtask agents` into
//! agents/target/zig/hop_counter.wasm; sign it as an agent and launch it with
//! `--input '{"hosts": ["127.0.0.1:7701", "127.0.0.1:7702"]}'`.
//!
//! Its result (and, recalled, its partial result) is
//! `{"arrivals": n, "departures": d, "hosts": [name, ...], "hops": {hop: arrivals so far, ...},
//! "checksum": c}`, where `c` is the 64-bit FNV-1a hash of: `arrivals` as a little-endian u64;
//! each host name's length as a u64 then its bytes; each hop as a u32 then its count as a u64.
//! The same checksum as hop-counter's, so one test checks both.

const std = @import("std");
const roam = @import("roam.zig");

pub const panic = roam.panic;

const HopCount = struct { hop: u32, arrivals: u64 };

/// The agent's state. It is ordinary module memory: the host snapshots it after each entry and
/// restores it on the next host, heap and all.
const State = struct {
    /// Where to go, in order (copies on the heap: the input is gone after `start`).
    route: std.ArrayList([]const u8) = .empty,
    /// How many stops of `route` were handed out.
    next_stop: usize = 0,
    arrivals: u64 = 0,
    /// Counted by `roam_agent_depart`, which runs after the entry that decided to leave.
    departures: u64 = 0,
    /// Every arrival's host name.
    hosts: std.ArrayList([]const u8) = .empty,
    /// Hop number and `arrivals` just after it, in arrival order, so ascending by hop.
    hops: std.ArrayList(HopCount) = .empty,
};

var state: State = .{};

/// Set by `start`. In the module's initial memory it is false: an `arrive` that finds it so
/// runs on memory that was not restored, and must not pass off a fresh state as the agent's.
var started: bool = false;

export fn roam_agent_manifest() void {
    roam.agentManifest(&.{});
}

export fn roam_agent_start() void {
    roam.agentStart(start);
}

export fn roam_agent_arrive() void {
    roam.agentArrive(arrive);
}

export fn roam_agent_depart() void {
    roam.agentDepart(depart);
}

export fn roam_agent_recall() void {
    roam.agentRecall(recall);
}

fn start(in: *roam.Reader) !roam.Next {
    state = .{};
    var keys = try roam.Keys.of(in);
    var has_hosts = false;
    while (try keys.next()) |key| {
        if (!std.mem.eql(u8, key, "hosts")) return roam.invalid("unknown input field {s}; expected hosts", .{key});
        var hosts = try in.array();
        while (try hosts.next(in)) try state.route.append(roam.heap, try roam.heap.dupe(u8, try in.text()));
        has_hosts = true;
    }
    if (!has_hosts) return roam.invalid("the input needs hosts, a list of addresses", .{});
    started = true;
    return nextStop() orelse .{ .finish = try report() };
}

fn arrive(here: *const roam.Arrival) !roam.Next {
    if (!started) return roam.invalid("the agent has no state here: its memory was not restored", .{});
    state.arrivals += 1;
    try state.hosts.append(roam.heap, try roam.heap.dupe(u8, here.host));
    try state.hops.append(roam.heap, .{ .hop = here.hop, .arrivals = state.arrivals });
    return nextStop() orelse .{ .home = try report() };
}

fn depart() !void {
    state.departures += 1;
}

fn recall(out: *roam.Writer) !void {
    try encodeReport(out);
}

fn nextStop() ?roam.Next {
    if (state.next_stop >= state.route.items.len) return null;
    const host = state.route.items[state.next_stop];
    state.next_stop += 1;
    return .{ .go = .{ .host = host } };
}

/// The report as CBOR, in scratch memory: it is wrapped into the decision before the entry ends.
fn report() ![]const u8 {
    var w = roam.Writer.init(roam.scratch());
    try encodeReport(&w);
    return w.written();
}

fn encodeReport(w: *roam.Writer) !void {
    try w.map(5);
    try w.text("arrivals");
    try w.uint(state.arrivals);
    try w.text("departures");
    try w.uint(state.departures);
    try w.text("hosts");
    try w.array(state.hosts.items.len);
    for (state.hosts.items) |h| try w.text(h);
    try w.text("hops");
    // Integer keys, as a Rust BTreeMap<u32, u64> is written; JSON shows them as strings.
    try w.map(state.hops.items.len);
    for (state.hops.items) |h| {
        try w.uint(h.hop);
        try w.uint(h.arrivals);
    }
    try w.text("checksum");
    try w.uint(checksum());
}

fn checksum() u64 {
    var hash = Fnv1a{};
    hash.int(u64, state.arrivals);
    for (state.hosts.items) |h| {
        hash.int(u64, h.len);
        hash.write(h);
    }
    for (state.hops.items) |h| {
        hash.int(u32, h.hop);
        hash.int(u64, h.arrivals);
    }
    return hash.state;
}

/// The 64-bit FNV-1a hash.
const Fnv1a = struct {
    state: u64 = 0xcbf2_9ce4_8422_2325,

    fn write(f: *Fnv1a, bytes: []const u8) void {
        for (bytes) |b| f.state = (f.state ^ b) *% 0x0100_0000_01b3;
    }

    fn int(f: *Fnv1a, comptime T: type, v: T) void {
        var b: [@sizeOf(T)]u8 = undefined;
        std.mem.writeInt(T, &b, v, .little);
        f.write(&b);
    }
};
