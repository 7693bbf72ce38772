//! A test agent that shows its memory surviving many hops: it counts its arrivals and records
//! each one on the heap, then brings it all home with a checksum. After `cargo xtask demo`, run
//! it with
//! `roam launch agents/target/wasm32-unknown-unknown/release/hop_counter.signed.wasm --host 127.0.0.1:7700 --input '{"hosts": ["127.0.0.1:7701", "127.0.0.1:7702", "127.0.0.1:7701"]}' --wait`.
//!
//! It uses no resources. Recalled, it hands over the same report as its partial result. The
//! result is
//! `{"arrivals": n, "hosts": [name, …], "hops": {hop: arrivals so far, …}, "checksum": c}`, where
//! `c` is the 64-bit FNV-1a hash (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) of
//! these bytes, integers little-endian: `arrivals` as a u64; for each host name in order, its
//! length in bytes as a u64 then its UTF-8 bytes; for each hop in ascending order, the hop as a
//! u32 then its count as a u64. A test recomputes it from the rest of the result.

use std::collections::BTreeMap;

use roam_sdk::{Agent, Arrival, Itinerary, Next, Partial, Result};
use serde::{Deserialize, Serialize};

/// Where to go: addresses may repeat (two hosts alternating, say).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    hosts: Vec<String>,
}

/// The agent, which is all of its state.
#[derive(Default)]
struct HopCounter {
    /// The hosts still to visit.
    itinerary: Itinerary,
    /// A plain counter (in the module's static data).
    arrivals: u64,
    /// Every arrival's host name (on the heap, growing with each hop).
    hosts: Vec<String>,
    /// Hop number → `arrivals` just after that arrival (a heap structure of another shape).
    hops: BTreeMap<u32, u64>,
}

/// What the agent brings home.
#[derive(Serialize)]
struct Report<'a> {
    arrivals: u64,
    hosts: &'a [String],
    hops: &'a BTreeMap<u32, u64>,
    checksum: u64,
}

impl HopCounter {
    fn report(&self) -> Report<'_> {
        Report { arrivals: self.arrivals, hosts: &self.hosts, hops: &self.hops, checksum: self.checksum() }
    }

    /// FNV-1a over everything the agent recorded, as the crate documentation spells out.
    fn checksum(&self) -> u64 {
        let mut hash = Fnv1a::default();
        hash.write(&self.arrivals.to_le_bytes());
        for host in &self.hosts {
            // Lossless: usize is at most 64 bits.
            hash.write(&(host.len() as u64).to_le_bytes());
            hash.write(host.as_bytes());
        }
        for (hop, count) in &self.hops {
            hash.write(&hop.to_le_bytes());
            hash.write(&count.to_le_bytes());
        }
        hash.0
    }

    /// Goes to the next host, or home with the report when there is none.
    fn next(&mut self) -> Result<Next> {
        match self.itinerary.next_stop() {
            Some(next) => Ok(next),
            None => Next::home(&self.report()),
        }
    }
}

impl Agent for HopCounter {
    type Input = Input;

    fn on_start(&mut self, input: Input) -> Result<Next> {
        self.itinerary = Itinerary::new(input.hosts);
        match self.itinerary.next_stop() {
            Some(next) => Ok(next),
            None => Next::finish(&self.report()),
        }
    }

    fn on_arrival(&mut self, here: &Arrival) -> Result<Next> {
        self.arrivals += 1;
        self.hosts.push(here.host.clone());
        self.hops.insert(here.hop, self.arrivals);
        self.next()
    }

    fn on_recall(&mut self) -> Result<Partial> {
        Partial::of(&self.report())
    }
}

/// The 64-bit FNV-1a hash: tiny, and easy for a test to recompute in any language.
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

roam_sdk::agent!(HopCounter);
