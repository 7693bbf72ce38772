//! roam's code on demand against Extism, on the same logic (count the vowels of a text, Extism's
//! canonical example), measured in one run: cold load, warm load and the cost of one small call.
//! Prints one markdown table; each row pairs the two medians and their ratio.
//!
//! `cargo xtask bench --only extism` builds both modules and runs it (`--smoke` for a short run).
//! Arguments: `[--smoke] ROAM_MODULE.wasm EXTISM_PLUGIN.wasm` (both unsigned, as built).

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use extism::convert::Json;
use extism::{Plugin, PluginBuilder};
use roam_host::fetch::ModuleSpec;
use roam_host::local::{CodeOnDemand, LocalModule};
use roam_keys::{Kind, SecretKey, SignRequest, TrustStore};
use serde::Deserialize;

/// The versions compared, as pinned in Cargo.toml and Cargo.lock.
const VERSIONS: &str = "roam (wasmtime 48.0.8) vs Extism 1.30.0 (wasmtime 43.0.2)";

/// Both modules answer `{"count": N}`.
#[derive(Deserialize)]
struct Output {
    count: u32,
}

/// Sizes of the run: loads sampled, and calls per timed batch.
struct Scale {
    loads: usize,
    samples: usize,
    calls: usize,
}

const FULL: Scale = Scale { loads: 15, samples: 7, calls: 5_000 };
const SMOKE: Scale = Scale { loads: 2, samples: 2, calls: 50 };

/// Sorted samples, in seconds.
struct Stats(Vec<f64>);

impl Stats {
    fn new(mut v: Vec<f64>) -> Self {
        v.sort_by(f64::total_cmp);
        Self(v)
    }
    fn q(&self, p: f64) -> f64 {
        self.0[((self.0.len() - 1) as f64 * p).round() as usize]
    }
    fn median(&self) -> f64 {
        self.q(0.5)
    }
    fn cell(&self) -> String {
        format!("{} ({} – {})", time(self.median()), time(self.q(0.1)), time(self.q(0.9)))
    }
}

fn time(d: f64) -> String {
    match d {
        d if d < 1e-6 => format!("{:.0} ns", d * 1e9),
        d if d < 1e-3 => format!("{:.1} µs", d * 1e6),
        d if d < 1.0 => format!("{:.2} ms", d * 1e3),
        d => format!("{d:.2} s"),
    }
}

/// Times `n` runs of `f`; what `f` returns is dropped outside the timed span.
fn sample<T>(n: usize, mut f: impl FnMut() -> Result<T>) -> Result<Stats> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let kept = f()?;
        v.push(t.elapsed().as_secs_f64());
        drop(kept);
    }
    Ok(Stats::new(v))
}

/// Per-call cost: `samples` batches of `calls` calls, each batch's mean.
fn per_call(scale: &Scale, mut f: impl FnMut() -> Result<u32>) -> Result<Stats> {
    let mut v = Vec::with_capacity(scale.samples);
    for _ in 0..scale.samples {
        let t = Instant::now();
        for _ in 0..scale.calls {
            std::hint::black_box(f()?);
        }
        v.push(t.elapsed().as_secs_f64() / scale.calls as f64);
    }
    Ok(Stats::new(v))
}

fn read(path: &str) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {path}: build it with `cargo xtask bench --only extism`"))
}

fn sign(key: &SecretKey, wasm: &[u8]) -> Result<Vec<u8>> {
    let now = roam_host::state::now_secs();
    let request = SignRequest {
        kind: Kind::Code,
        name: "count-vowels".into(),
        version: semver::Version::new(1, 0, 0),
        issued_at: now,
        not_before: now,
        expires: now + 3600,
        capabilities: Vec::new(),
    };
    Ok(roam_keys::sign_module(wasm, key, request)?)
}

/// A fresh embedding, as a new process of the application would build it.
fn roam_embed(trust: &TrustStore, cache: &Path) -> Result<CodeOnDemand> {
    Ok(CodeOnDemand::builder(trust.clone()).cache_dir(cache.to_owned()).build()?)
}

fn extism(wasm: &[u8]) -> PluginBuilder<'_> {
    PluginBuilder::new(wasm).with_wasi(false)
}

fn roam_count(cod: &CodeOnDemand, module: &LocalModule, text: &str) -> Result<u32> {
    Ok(cod.call::<_, Output>(module, &text)?.count)
}

fn extism_count(plugin: &mut Plugin, text: &str) -> Result<u32> {
    Ok(plugin.call::<_, Json<Output>>("count_vowels", text)?.0.count)
}

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let smoke = args.iter().any(|a| a == "--smoke");
    args.retain(|a| a != "--smoke");
    let [roam_wasm, extism_wasm] = args.as_slice() else {
        anyhow::bail!("usage: roam-vs-extism [--smoke] ROAM_MODULE.wasm EXTISM_PLUGIN.wasm");
    };
    let scale = if smoke { SMOKE } else { FULL };
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;

    // A real key and trust store, as a user of code on demand has.
    let dir = tempfile::tempdir()?;
    let (key_path, pub_path, _) = roam_keys::write_keypair(&dir.path().join("keys"), "bench")?;
    let trust_dir = dir.path().join("trust");
    std::fs::create_dir_all(&trust_dir)?;
    std::fs::copy(&pub_path, trust_dir.join("bench.pub"))?;
    let trust = TrustStore::load(&trust_dir)?;
    let module = sign(&SecretKey::load(&key_path)?, &read(roam_wasm)?)?;
    let plugin = read(extism_wasm)?;
    // Extism's canonical input: 1 KiB of text.
    let text: String =
        "Hello, World! The quick brown fox jumps over the lazy dog. ".chars().cycle().take(1024).collect();
    let mut rows = Vec::new();

    // Cold load: bytes in memory to ready to call, nothing cached. roam: a new embedding verifies
    // the signature, caches the module, compiles it and writes its compiled code to the cache.
    // Extism: `Plugin::new` with its compilation cache off.
    let mut n = 0;
    let roam_cold = sample(scale.loads, || {
        n += 1;
        let cod = roam_embed(&trust, &dir.path().join(format!("cold-{n}")))?;
        let loaded = cod.load(module.clone())?;
        Ok((cod, loaded))
    })?;
    let extism_cold = sample(scale.loads, || extism(&plugin).with_cache_disabled().build())?;
    rows.push(("cold load: verify + compile / `Plugin::new`, nothing cached", roam_cold, extism_cold));

    // Warm load from disk, as a later process does. roam: a new embedding finds the module by
    // hash in its cache (no network: the address is never contacted), checks its hash, verifies
    // its signature again and loads its compiled code. Extism: `Plugin::new` with wasmtime's
    // compilation cache, filled by a first load.
    let warm_dir = dir.path().join("warm");
    let (cod, loaded) = {
        let cod = roam_embed(&trust, &warm_dir)?;
        let loaded = cod.load(module.clone())?;
        (cod, loaded)
    };
    let by_hash = ModuleSpec::Hash(loaded.hash());
    let roam_warm = sample(scale.loads, || {
        let cod = roam_embed(&trust, &warm_dir)?;
        let found = runtime.block_on(cod.fetch("127.0.0.1:1", &by_hash))?;
        Ok((cod, found))
    })?;
    let cache_toml = dir.path().join("wasmtime-cache.toml");
    std::fs::write(&cache_toml, format!("[cache]\ndirectory = {:?}\n", dir.path().join("wasmtime-cache")))?;
    extism(&plugin).with_cache_config(&cache_toml).build()?;
    let extism_warm = sample(scale.loads, || extism(&plugin).with_cache_config(&cache_toml).build())?;
    rows.push(("warm load from the on-disk cache, new process", roam_warm, extism_warm));

    // Warm load with the compiled code in memory. roam: the same embedding asked again (the
    // module is read from the cache and verified again; the compiled code is reused). Extism:
    // `Plugin::new_from_compiled` (its cached-plugin path).
    let roam_memory =
        sample(scale.loads.max(scale.samples) * 10, || Ok(runtime.block_on(cod.fetch("127.0.0.1:1", &by_hash))?))?;
    let compiled = extism(&plugin).with_cache_disabled().compile()?;
    let extism_memory = sample(scale.loads.max(scale.samples) * 10, || Plugin::new_from_compiled(&compiled))?;
    rows.push(("warm load, compiled code in memory / `new_from_compiled`", roam_memory, extism_memory));

    // One call of a loaded module on 1 KiB: roam runs each call in a fresh instance, Extism
    // reuses the plugin's instance.
    let mut instance = extism(&plugin).with_cache_disabled().build()?;
    let (roam_answer, extism_answer) = (roam_count(&cod, &loaded, &text)?, extism_count(&mut instance, &text)?);
    ensure!(roam_answer == extism_answer, "the modules disagree: roam counts {roam_answer}, Extism {extism_answer}");
    let roam_call = per_call(&scale, || roam_count(&cod, &loaded, &text))?;
    let extism_call = per_call(&scale, || extism_count(&mut instance, &text))?;
    rows.push(("call: count vowels in 1 KiB, loaded module", roam_call, extism_call));

    println!("\n{VERSIONS}; medians (p10 – p90)\n");
    println!("| figure | roam | Extism | roam / Extism | goal |\n| --- | --- | --- | --- | --- |");
    for (figure, roam, extism) in rows {
        println!("| {figure} | {} | {} | {:.2}× | ≤ 1× |", roam.cell(), extism.cell(), roam.median() / extism.median());
    }
    Ok(())
}
