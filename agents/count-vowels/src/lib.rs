//! A small, pure code module: counts the vowels in a text. It is the same logic as Extism's
//! canonical example plugin, written for roam, so that `cargo xtask bench --only extism` can
//! compare loading and calling both on an equivalent module.

use serde::Serialize;

#[derive(Serialize)]
struct Output {
    count: u32,
}

fn count_vowels(text: String) -> roam_sdk::Result<Output> {
    let count = text.chars().filter(|c| "aeiouAEIOU".contains(*c)).count() as u32;
    Ok(Output { count })
}

roam_sdk::query!(count_vowels);
