//! Extism's canonical example plugin: counts the vowels in a text. The same logic as
//! agents/count-vowels, written against Extism's ABI.

use extism_pdk::{FnResult, Json, plugin_fn};
use serde::Serialize;

#[derive(Serialize)]
struct Output {
    count: u32,
}

#[plugin_fn]
pub fn count_vowels(text: String) -> FnResult<Json<Output>> {
    let count = text.chars().filter(|c| "aeiouAEIOU".contains(*c)).count() as u32;
    Ok(Json(Output { count }))
}
