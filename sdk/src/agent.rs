//! Mobile agents: the [`Agent`] trait, what an agent does next ([`Next`]), its route
//! ([`Itinerary`]), and the [`agent!`](crate::agent!) macro that exports its entry points.
//!
//! roam moves an agent with weak mobility: after an entry point returns, the host snapshots the
//! module's linear memory and mutable globals, restores them on the next host and calls the
//! arrival entry there. The agent value lives in one static in that memory (see [`AgentCell`]),
//! so its fields, heap and all, are the agent's state on every host.

use core::cell::RefCell;

use roam_abi::Arrival;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::entry::{begin_entry, fail, run_entry, str_eq};
use crate::{Error, Result, cbor};

/// What an agent does next, returned by [`Agent::on_start`] and [`Agent::on_arrival`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Next(roam_abi::Next);

impl Next {
    /// Move to the host at the address `host`.
    pub fn go(host: impl Into<String>) -> Next {
        Self::go_with_alternates(host, Vec::new())
    }

    /// Move to the host at the address `host`; if it cannot be reached, to the first of
    /// `alternates` that can. The arrival's [`Arrival::unreachable`] lists those that could not.
    pub fn go_with_alternates(host: impl Into<String>, alternates: Vec<String>) -> Next {
        Next(roam_abi::Next::Go { host: host.into(), alternates })
    }

    /// Travel home and finish there with `result`, which is encoded as CBOR now (so this fails
    /// only if `result` cannot be encoded).
    pub fn home<T: Serialize>(result: &T) -> Result<Next> {
        Ok(Next(roam_abi::Next::Home { result: cbor::encode(result)? }))
    }

    /// Finish here with `result` (encoded as CBOR now), which the host reports home.
    pub fn finish<T: Serialize>(result: &T) -> Result<Next> {
        Ok(Next(roam_abi::Next::Finish { result: cbor::encode(result)? }))
    }

    /// The address the agent moves to, or `None` if it goes home or finishes.
    pub fn destination(&self) -> Option<&str> {
        match &self.0 {
            roam_abi::Next::Go { host, .. } => Some(host),
            roam_abi::Next::Home { .. } | roam_abi::Next::Finish { .. } => None,
        }
    }
}

/// The decision as the host reads it.
impl From<Next> for roam_abi::Next {
    fn from(next: Next) -> Self {
        next.0
    }
}

/// What a recalled agent hands over at home: its partial result, shown by `roam agents ID` and
/// `roam recall --wait`. Made by [`Agent::on_recall`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Partial(Vec<u8>);

impl Partial {
    /// Nothing to hand over.
    pub fn none() -> Partial {
        Partial(Vec::new())
    }

    /// `result`, encoded as CBOR now (so this fails only if `result` cannot be encoded).
    pub fn of<T: Serialize>(result: &T) -> Result<Partial> {
        Ok(Partial(cbor::encode(result)?))
    }
}

/// A mobile agent. Its value lives in the module's memory and travels with it.
///
/// Keep the agent's state in its fields: plain values (counters, maps, vectors of results)
/// survive every hop as they are, with no serialization to write. Handles such as
/// [`Table`](crate::Table) and [`Log`](crate::Log) belong to one host: open them in the entry
/// that uses them, never keep them in a field.
///
/// Export the entries with [`agent!`](crate::agent!).
pub trait Agent: Default + 'static {
    /// The launch input (a JSON-like value on the command line), decoded with serde.
    type Input: DeserializeOwned;

    /// Called once, on the home host, on a value made with `Default`: decides where to go first.
    fn on_start(&mut self, input: Self::Input) -> Result<Next>;

    /// Called on every host the agent arrives at, with its state as it left the previous one.
    /// `arrival` says where it is and how each declared resource was bound here.
    fn on_arrival(&mut self, arrival: &Arrival) -> Result<Next>;

    /// Called just before the agent leaves a host; does nothing unless overridden.
    fn on_depart(&mut self) {}

    /// Called once, on the home host, when the agent's home recalled it (`roam recall`): its
    /// state is as it left the last host it ran on, and what it returns is its partial result.
    /// By default it hands over nothing. An agent recalled before its first visit ends without
    /// this call.
    fn on_recall(&mut self) -> Result<Partial> {
        Ok(Partial::none())
    }
}

/// A route: stops in order, each a primary host with alternates tried when it is unreachable.
///
/// Keep it in the agent's state and return [`Itinerary::next_stop`] until it is done. Its serde
/// form can be the agent's input, e.g. `{"stops": [{"host": "10.0.0.7:7700", "alternates":
/// ["10.0.0.8:7700"]}, {"host": "10.0.0.9:7700"}]}` (`alternates` may be left out).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Itinerary {
    /// The whole route, kept after it is travelled so that the agent can still show it.
    stops: Vec<Stop>,
    /// How many stops [`Itinerary::next_stop`] has handed out.
    #[serde(default)]
    next: usize,
}

/// One stop of an [`Itinerary`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Stop {
    /// Where to go.
    host: String,
    /// Where to go instead, in order, if `host` cannot be reached.
    #[serde(default)]
    alternates: Vec<String>,
}

impl Itinerary {
    /// A route with one host per stop and no alternates.
    pub fn new(stops: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self::from_stops(stops.into_iter().map(|host| Stop { host: host.into(), alternates: Vec::new() }))
    }

    /// A route of `(host, alternates)` stops.
    pub fn with_alternates(stops: Vec<(String, Vec<String>)>) -> Self {
        Self::from_stops(stops.into_iter().map(|(host, alternates)| Stop { host, alternates }))
    }

    fn from_stops(stops: impl Iterator<Item = Stop>) -> Self {
        Self { stops: stops.collect(), next: 0 }
    }

    /// Moves on to the next stop: a [`Next::go_with_alternates`] to it, or `None` when the route
    /// is done.
    pub fn next_stop(&mut self) -> Option<Next> {
        let stop = self.stops.get(self.next)?;
        self.next += 1;
        Some(Next::go_with_alternates(stop.host.clone(), stop.alternates.clone()))
    }

    /// How many stops [`Itinerary::next_stop`] has yet to hand out.
    pub fn remaining(&self) -> usize {
        self.stops.len().saturating_sub(self.next)
    }
}

/// Exports a type implementing [`Agent`] as the module's agent, with the resources it uses.
///
/// ```ignore
/// roam_sdk::agent!(StockSurvey, resources: [
///     table "stock" by type,
///     table "config" by value,
///     log "reports" by identifier,
/// ]);
/// ```
///
/// Each resource is a kind (`table` or `log`), the name the agent opens it by, and how the agent
/// refers to it: `by identifier` (exactly that resource, on the agent's home host), `by value`
/// (a copy of its content will do) or `by type` (whatever this host offers under that name).
/// On arrival the host binds each one accordingly and reports how in [`Arrival::bindings`]; one
/// it could not bind makes [`Table::open`](crate::Table::open) or
/// [`Log::open`](crate::Log::open) fail with [`ErrorCode::Unavailable`](crate::ErrorCode).
/// An agent that uses no resource writes `roam_sdk::agent!(HopCounter);`. Opening a resource
/// still needs its capability (`table:stock`) in the module's signed manifest.
///
/// The macro keeps the agent value in one static and exports five entries, which the host calls
/// as the `roam_abi::AGENT_*` constants name them:
/// - `roam_agent_start`: decodes the launch input, makes the agent with `Default`, calls
///   [`Agent::on_start`] and reports its [`Next`];
/// - `roam_agent_arrive`: decodes the [`Arrival`], calls [`Agent::on_arrival`] on the restored
///   agent and reports its [`Next`] (an error if there is no agent: the memory was not restored);
/// - `roam_agent_depart`: calls [`Agent::on_depart`];
/// - `roam_agent_recall`: calls [`Agent::on_recall`] on the restored agent and hands over its
///   [`Partial`] result;
/// - `roam_agent_manifest`: reports the resource declarations; it does not touch the agent.
///
/// An error the agent returns, or a panic, is reported to the host as the call's error message.
#[macro_export]
macro_rules! agent {
    ($agent:ty $(,)?) => {
        $crate::agent!($agent, resources: []);
    };
    (
        $agent:ty,
        resources: [ $( $kind:ident $name:literal by $binding:tt ),* $(,)? ] $(,)?
    ) => {
        const _: () = {
            /// The agent: where its state lives, in memory, from hop to hop.
            static AGENT: $crate::__private::AgentCell<$agent> =
                $crate::__private::AgentCell::new();

            const _: () = assert!(
                $crate::__private::all_distinct(&[$($name),*]),
                "agent!: a resource is declared twice"
            );

            /// Starts the agent on its home host; generated by `roam_sdk::agent!`.
            #[allow(unsafe_code)] // Exporting a symbol by name is `unsafe` since Rust 2024.
            #[unsafe(export_name = "roam_agent_start")]
            extern "C" fn __roam_agent_start() {
                $crate::__private::agent_start(&AGENT);
            }

            /// Resumes the agent on a host it arrived at; generated by `roam_sdk::agent!`.
            #[allow(unsafe_code)] // Exporting a symbol by name is `unsafe` since Rust 2024.
            #[unsafe(export_name = "roam_agent_arrive")]
            extern "C" fn __roam_agent_arrive() {
                $crate::__private::agent_arrive(&AGENT);
            }

            /// Tells the agent it is leaving; generated by `roam_sdk::agent!`.
            #[allow(unsafe_code)] // Exporting a symbol by name is `unsafe` since Rust 2024.
            #[unsafe(export_name = "roam_agent_depart")]
            extern "C" fn __roam_agent_depart() {
                $crate::__private::agent_depart(&AGENT);
            }

            /// Hands over what a recalled agent has; generated by `roam_sdk::agent!`.
            #[allow(unsafe_code)] // Exporting a symbol by name is `unsafe` since Rust 2024.
            #[unsafe(export_name = "roam_agent_recall")]
            extern "C" fn __roam_agent_recall() {
                $crate::__private::agent_recall(&AGENT);
            }

            /// Reports the agent's resource declarations; generated by `roam_sdk::agent!`.
            #[allow(unsafe_code)] // Exporting a symbol by name is `unsafe` since Rust 2024.
            #[unsafe(export_name = "roam_agent_manifest")]
            extern "C" fn __roam_agent_manifest() {
                $crate::__private::agent_manifest(|| {
                    $crate::__agent_manifest!($( $kind $name by $binding ),*)
                });
            }
        };
    };
}

/// The [`Manifest`] of the resources `agent!` was given; not part of the API.
#[doc(hidden)]
#[macro_export]
macro_rules! __agent_manifest {
    ($( $kind:ident $name:literal by $binding:tt ),* $(,)?) => {
        $crate::__private::Manifest {
            resources: ::std::vec![$(
                $crate::__private::ResourceDecl {
                    name: ::std::string::String::from($name),
                    kind: ::std::string::String::from($crate::__agent_kind!($kind)),
                    binding: $crate::__agent_binding!($binding),
                }
            ),*],
        }
    };
}

/// A resource kind of `agent!`, as the manifest spells it; not part of the API.
#[doc(hidden)]
#[macro_export]
macro_rules! __agent_kind {
    (table) => {
        "table"
    };
    (log) => {
        "log"
    };
    ($other:tt) => {
        ::core::compile_error!(::core::concat!(
            "agent!: unknown resource kind `",
            ::core::stringify!($other),
            "`: write `table` or `log`"
        ))
    };
}

/// A binding of `agent!`; not part of the API.
#[doc(hidden)]
#[macro_export]
macro_rules! __agent_binding {
    (identifier) => {
        $crate::Binding::Identifier
    };
    (value) => {
        $crate::Binding::Value
    };
    (type) => {
        $crate::Binding::Type
    };
    ($other:tt) => {
        ::core::compile_error!(::core::concat!(
            "agent!: unknown binding `by ",
            ::core::stringify!($other),
            "`: write `by identifier`, `by value` or `by type`"
        ))
    };
}

// `agent!` spells the export names out (attributes take no constants): check them against the ABI.
const _: () = {
    assert!(str_eq(roam_abi::AGENT_START, "roam_agent_start"), "agent! must export roam_abi::AGENT_START");
    assert!(str_eq(roam_abi::AGENT_ARRIVE, "roam_agent_arrive"), "agent! must export roam_abi::AGENT_ARRIVE");
    assert!(str_eq(roam_abi::AGENT_DEPART, "roam_agent_depart"), "agent! must export roam_abi::AGENT_DEPART");
    assert!(str_eq(roam_abi::AGENT_RECALL, "roam_agent_recall"), "agent! must export roam_abi::AGENT_RECALL");
    assert!(str_eq(roam_abi::AGENT_MANIFEST, "roam_agent_manifest"), "agent! must export roam_abi::AGENT_MANIFEST");
};

/// Where `agent!` keeps the agent value: one static in the module's linear memory, which the
/// host snapshots after each entry returns and restores on the next host.
///
/// Empty (`None`) in the module's initial memory image; `roam_agent_start` fills it. Not part
/// of the API: only [`agent!`](crate::agent!) names it.
#[doc(hidden)]
pub struct AgentCell<A> {
    /// The agent; a `RefCell` because entries are plain functions that reach it through a
    /// shared static.
    agent: RefCell<Option<A>>,
}

impl<A> core::fmt::Debug for AgentCell<A> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // The agent's own type need not be Debug; whether the cell holds one is what helps.
        let holds = self.agent.try_borrow().map(|a| a.is_some());
        f.debug_struct("AgentCell").field("holds_agent", &holds.ok()).finish()
    }
}

// SAFETY: `Sync` lets `agent!` put an `AgentCell` in a static although `RefCell` is not `Sync`.
// Sharing it is sound only because nothing can reach it from two threads: a wasm32 module built
// without the `atomics` feature has no shared memory and no threads, so the host runs one entry
// at a time on one thread. With `atomics` there is no such guarantee, and no `Sync` either:
// `agent!` then fails to compile rather than race.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[allow(unsafe_code)]
unsafe impl<A> Sync for AgentCell<A> {}

impl<A> AgentCell<A> {
    /// An empty cell, as the static starts out.
    #[allow(clippy::new_without_default)] // Must be const, for a static.
    pub const fn new() -> Self {
        Self { agent: RefCell::new(None) }
    }
}

/// Why an entry found no agent to resume.
const NO_AGENT: &str = "the agent has no state here: this host did not restore its memory, or \
                        roam_agent_start never ran";

impl<A: Agent> AgentCell<A> {
    /// Makes the agent afresh and starts it (replacing any earlier one).
    fn start(&self, input: A::Input) -> Result<Next> {
        let mut slot = self.borrow()?;
        slot.insert(A::default()).on_start(input)
    }

    /// Resumes the restored agent on arrival.
    fn arrive(&self, arrival: &Arrival) -> Result<Next> {
        let mut slot = self.borrow()?;
        let agent = slot.as_mut().ok_or_else(|| Error::msg(NO_AGENT))?;
        agent.on_arrival(arrival)
    }

    /// Tells the agent it is leaving.
    fn depart(&self) -> Result<()> {
        let mut slot = self.borrow()?;
        let agent = slot.as_mut().ok_or_else(|| Error::msg(NO_AGENT))?;
        agent.on_depart();
        Ok(())
    }

    /// Asks the recalled agent for what it has.
    fn recall(&self) -> Result<Partial> {
        let mut slot = self.borrow()?;
        let agent = slot.as_mut().ok_or_else(|| Error::msg(NO_AGENT))?;
        agent.on_recall()
    }

    /// The agent's slot, for one entry call.
    fn borrow(&self) -> Result<core::cell::RefMut<'_, Option<A>>> {
        // Entries do not call one another, and a trap ends the instance, so the cell is never
        // borrowed when an entry starts, unless the host resumed a snapshot taken mid-call.
        self.agent.try_borrow_mut().map_err(|_| Error::msg("the agent is in use by an entry that did not return"))
    }
}

/// `true` if no two of `names` are equal, in a const context: `agent!` checks its resources.
#[doc(hidden)]
pub const fn all_distinct(names: &[&str]) -> bool {
    let mut i = 0;
    while i < names.len() {
        let mut j = i + 1;
        while j < names.len() {
            if str_eq(names[i], names[j]) {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

/// What `agent!` expands to; not part of the API.
pub(crate) mod private {
    use super::*;

    pub use roam_abi::{Manifest, ResourceDecl};

    pub use super::{AgentCell, all_distinct};

    /// `roam_agent_start`: decodes the launch input and starts the agent.
    pub fn agent_start<A: Agent>(cell: &AgentCell<A>) {
        run_entry(|| {
            let input = crate::input::<A::Input>().map_err(|err| format!("invalid input: {err}"))?;
            cell.start(input).map(roam_abi::Next::from).map_err(|err| err.to_string())
        });
    }

    /// `roam_agent_arrive`: decodes the arrival and resumes the agent.
    pub fn agent_arrive<A: Agent>(cell: &AgentCell<A>) {
        run_entry(|| {
            let arrival = crate::input::<Arrival>().map_err(|err| format!("invalid arrival from the host: {err}"))?;
            cell.arrive(&arrival).map(roam_abi::Next::from).map_err(|err| err.to_string())
        });
    }

    /// `roam_agent_depart`: tells the agent it is leaving. Reports nothing unless it fails: the
    /// host needs no result from this entry.
    pub fn agent_depart<A: Agent>(cell: &AgentCell<A>) {
        begin_entry();
        if let Err(err) = cell.depart() {
            fail(err);
        }
    }

    /// `roam_agent_recall`: hands over the recalled agent's partial result, as it is: the
    /// result is already CBOR (or nothing).
    pub fn agent_recall<A: Agent>(cell: &AgentCell<A>) {
        begin_entry();
        match cell.recall() {
            Ok(Partial(result)) => crate::sys::finish(roam_abi::FINISH_OK, &result),
            Err(err) => fail(err),
        }
    }

    /// `roam_agent_manifest`: reports the agent's declarations, made by `manifest`.
    pub fn agent_manifest(manifest: impl FnOnce() -> Manifest) {
        run_entry(|| Ok(manifest()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)] // A failing unwrap or a panic is a failing test.
mod tests {
    use roam_abi::{Action, Binding, Bound, Manifest, ResourceDecl};
    use serde::Deserialize;

    use super::*;

    fn go(host: &str, alternates: &[&str]) -> Next {
        Next::go_with_alternates(host, alternates.iter().map(|a| a.to_string()).collect())
    }

    #[test]
    fn an_itinerary_hands_out_its_stops_in_order_then_none() {
        let mut route = Itinerary::new(["a:1", "b:2", "a:1"]);
        assert_eq!(route.remaining(), 3);
        assert_eq!(route.next_stop(), Some(Next::go("a:1")));
        assert_eq!(route.next_stop(), Some(Next::go("b:2")));
        assert_eq!(route.remaining(), 1);
        assert_eq!(route.next_stop(), Some(Next::go("a:1")));
        assert_eq!(route.remaining(), 0);
        assert_eq!(route.next_stop(), None);
        assert_eq!(route.next_stop(), None);
        assert_eq!(route.remaining(), 0);

        let mut empty = Itinerary::default();
        assert_eq!(empty.remaining(), 0);
        assert_eq!(empty.next_stop(), None);
        assert_eq!(Itinerary::new(Vec::<String>::new()), empty);
    }

    #[test]
    fn an_itinerary_keeps_each_stops_alternates() {
        let mut route = Itinerary::with_alternates(vec![
            ("a:1".into(), vec!["a2:1".into(), "a3:1".into()]),
            ("b:2".into(), vec![]),
        ]);
        assert_eq!(route.next_stop(), Some(go("a:1", &["a2:1", "a3:1"])));
        assert_eq!(route.next_stop(), Some(go("b:2", &[])));
        assert_eq!(route.next_stop(), None);
    }

    #[test]
    fn an_itinerary_round_trips_through_cbor_midway() {
        let mut route = Itinerary::with_alternates(vec![("a:1".into(), vec!["a2:1".into()]), ("b:2".into(), vec![])]);
        route.next_stop();
        let back: Itinerary = cbor::decode(&cbor::encode(&route).unwrap()).unwrap();
        assert_eq!(back, route);
        assert_eq!(back.remaining(), 1);
    }

    #[test]
    fn an_itinerary_reads_from_input_with_alternates_optional() {
        // The JSON an input would give, as the host encodes it: a map, `alternates` left out.
        #[derive(Serialize)]
        struct Stop<'a> {
            host: &'a str,
        }
        #[derive(Serialize)]
        struct Route<'a> {
            stops: Vec<Stop<'a>>,
        }
        let input = Route { stops: vec![Stop { host: "a:1" }, Stop { host: "b:2" }] };
        let route: Itinerary = cbor::decode(&cbor::encode(&input).unwrap()).unwrap();
        assert_eq!(route, Itinerary::new(["a:1", "b:2"]));

        // A stop past the end (a hand-made input) is simply no stop.
        #[derive(Serialize)]
        struct Past<'a> {
            stops: Vec<Stop<'a>>,
            next: usize,
        }
        let past = Past { stops: vec![Stop { host: "a:1" }], next: 5 };
        let mut route: Itinerary = cbor::decode(&cbor::encode(&past).unwrap()).unwrap();
        assert_eq!(route.remaining(), 0);
        assert_eq!(route.next_stop(), None);
    }

    #[test]
    fn next_encodes_as_the_abi_decision() {
        let cases = [
            (Next::go("a:1"), roam_abi::Next::Go { host: "a:1".into(), alternates: vec![] }),
            (go("a:1", &["b:2"]), roam_abi::Next::Go { host: "a:1".into(), alternates: vec!["b:2".into()] }),
            (Next::home(&7_u8).unwrap(), roam_abi::Next::Home { result: vec![0x07] }),
            (Next::finish(&"ok").unwrap(), roam_abi::Next::Finish { result: vec![0x62, b'o', b'k'] }),
        ];
        for (next, abi) in cases {
            let bytes = cbor::encode(&roam_abi::Next::from(next.clone())).unwrap();
            assert_eq!(bytes, cbor::encode(&abi).unwrap());
            assert_eq!(cbor::decode::<roam_abi::Next>(&bytes).unwrap(), abi);
        }
    }

    #[test]
    fn a_result_travels_as_a_cbor_byte_string_that_decodes_back() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Survey {
            rows_seen: u64,
            hosts: Vec<String>,
        }
        let survey = Survey { rows_seen: 3, hosts: vec!["a".into()] };
        let next = roam_abi::Next::from(Next::home(&survey).unwrap());
        // {"Home": {"result": h'…'}}: the result is a byte string (major type 2), not an array.
        let bytes = cbor::encode(&next).unwrap();
        let prefix = [&[0xa1, 0x64][..], b"Home", &[0xa1, 0x66], b"result"].concat();
        assert!(bytes.starts_with(&prefix), "{bytes:x?}");
        assert_eq!(bytes[prefix.len()] >> 5, 2);
        let roam_abi::Next::Home { result } = next else { panic!("not Home: {next:?}") };
        assert_eq!(cbor::decode::<Survey>(&result).unwrap(), survey);
    }

    #[test]
    fn next_names_its_destination() {
        assert_eq!(go("a:1", &["b:2"]).destination(), Some("a:1"));
        assert_eq!(Next::home(&()).unwrap().destination(), None);
        assert_eq!(Next::finish(&()).unwrap().destination(), None);
    }

    /// Counts arrivals; its `Default` is what `roam_agent_start` makes.
    #[derive(Default)]
    struct Counter {
        route: Itinerary,
        arrivals: u32,
        departures: u32,
    }

    impl Agent for Counter {
        type Input = Vec<String>;

        fn on_start(&mut self, hosts: Vec<String>) -> Result<Next> {
            self.route = Itinerary::new(hosts);
            self.route.next_stop().map_or_else(|| Next::finish(&0), Ok)
        }

        fn on_arrival(&mut self, _arrival: &Arrival) -> Result<Next> {
            self.arrivals += 1;
            match self.route.next_stop() {
                Some(next) => Ok(next),
                None => Next::home(&self.arrivals),
            }
        }

        fn on_depart(&mut self) {
            self.departures += 1;
        }
    }

    fn arrival(host: &str, hop: u32) -> Arrival {
        Arrival {
            host: host.into(),
            address: format!("{host}:7700"),
            hop,
            bindings: vec![Bound { name: "stock".into(), action: Action::Rb, error: None }],
            unreachable: vec![],
        }
    }

    #[test]
    fn the_cell_keeps_the_agent_between_entries() {
        let cell = AgentCell::<Counter>::new();
        let next = cell.start(vec!["a".into(), "b".into()]).unwrap();
        assert_eq!(next, Next::go("a"));
        cell.depart().unwrap();
        assert_eq!(cell.arrive(&arrival("a", 1)).unwrap(), Next::go("b"));
        cell.depart().unwrap();
        assert_eq!(cell.arrive(&arrival("b", 2)).unwrap(), Next::home(&2_u32).unwrap());
        let agent = cell.agent.borrow();
        let agent = agent.as_ref().unwrap();
        assert_eq!((agent.arrivals, agent.departures), (2, 2));
    }

    #[test]
    fn a_recalled_agent_hands_over_its_partial_result_or_nothing() {
        let cell = AgentCell::<Counter>::new();
        assert!(cell.recall().is_err(), "no agent, no partial result");
        cell.start(vec!["a".into(), "b".into()]).unwrap();
        cell.arrive(&arrival("a", 1)).unwrap();
        // Counter keeps the default: nothing.
        assert_eq!(cell.recall().unwrap(), Partial::none());
        assert_eq!(Partial::of(&1_u8).unwrap(), Partial(vec![0x01]));
    }

    #[test]
    fn start_makes_the_agent_afresh() {
        let cell = AgentCell::<Counter>::new();
        cell.start(vec!["a".into()]).unwrap();
        cell.arrive(&arrival("a", 1)).unwrap();
        assert_eq!(cell.start(vec![]).unwrap(), Next::finish(&0).unwrap());
        assert_eq!(cell.agent.borrow().as_ref().unwrap().arrivals, 0);
    }

    #[test]
    fn arriving_without_state_is_an_error_not_a_fresh_agent() {
        let cell = AgentCell::<Counter>::new();
        let err = cell.arrive(&arrival("a", 1)).unwrap_err();
        assert!(err.to_string().contains("did not restore"), "{err}");
        assert!(cell.depart().is_err());
        assert!(cell.agent.borrow().is_none());
    }

    #[test]
    fn an_arrival_decodes_from_the_hosts_cbor() {
        let arrival = arrival("b", 2);
        let back: Arrival = cbor::decode(&cbor::encode(&arrival).unwrap()).unwrap();
        assert_eq!(back, arrival);
    }

    #[test]
    fn the_manifest_lists_each_declared_resource() {
        let manifest = crate::__agent_manifest!(
            table "stock" by type,
            table "config" by value,
            log "reports" by identifier,
        );
        let decl = |name: &str, kind: &str, binding| ResourceDecl { name: name.into(), kind: kind.into(), binding };
        assert_eq!(
            manifest.resources,
            [
                decl("stock", "table", Binding::Type),
                decl("config", "table", Binding::Value),
                decl("reports", "log", Binding::Identifier),
            ]
        );
        assert_eq!(crate::__agent_manifest!(), Manifest::default());

        // As the host reads it: bindings in lower case.
        #[derive(Deserialize)]
        struct Decl {
            binding: String,
        }
        #[derive(Deserialize)]
        struct Declared {
            resources: Vec<Decl>,
        }
        let declared: Declared = cbor::decode(&cbor::encode(&manifest).unwrap()).unwrap();
        let bindings: Vec<_> = declared.resources.into_iter().map(|d| d.binding).collect();
        assert_eq!(bindings, ["type", "value", "identifier"]);
    }

    #[test]
    fn duplicate_resource_names_are_caught() {
        assert!(all_distinct(&[]));
        assert!(all_distinct(&["stock", "config", "reports"]));
        assert!(!all_distinct(&["stock", "config", "stock"]));
    }
}
