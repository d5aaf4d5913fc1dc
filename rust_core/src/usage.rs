//! Token usage, extracted from each provider's own usage shape into one struct.

use serde::{Deserialize, Deserializer};

use crate::json_scan::{once, Scan};

/// A token count as the gateway's billing reads one (`gateway/billing.py`, `count`): an integer
/// that fits, or a number with no fraction (`12.0`, `1.2e1`: some servers write floats);
/// anything else (negative, fractional, a string, `null`) is no count, which the usage takes as
/// 0, as it takes a count the upstream left out. The upstream's answer is relayed either way:
/// a nonsense count is not a reason to break a stream whose content arrived.
fn count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    // Written out as one bound-checked cast: 2^64 itself is past u64 (`as` would saturate it).
    const PAST_U64: f64 = 18_446_744_073_709_551_616.0;
    Ok(match serde_json::Value::deserialize(deserializer)? {
        serde_json::Value::Number(number) => number.as_u64().or_else(|| {
            number
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < PAST_U64)
                .map(|f| {
                    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                    // (checked above: integral, in range)
                    let whole = f as u64;
                    whole
                })
        }),
        _ => None,
    })
}

/// Usage in OpenAI's vocabulary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens, cache reads and writes included.
    pub prompt_tokens: u64,
    /// Completion tokens (Gemini: thoughts included).
    pub completion_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
    /// Prompt tokens read from a cache (0 when none).
    pub cached_tokens: u64,
    /// Prompt tokens written to a cache (Anthropic `cache_creation_input_tokens`; 0 when none).
    pub cache_write_tokens: u64,
}

/// OpenAI `usage` (chat completion chunk or response).
#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct OpenAiUsage {
    // Options: some OpenAI-compatible servers send `null` counts.
    #[serde(deserialize_with = "count")]
    prompt_tokens: Option<u64>,
    #[serde(deserialize_with = "count")]
    completion_tokens: Option<u64>,
    #[serde(deserialize_with = "count")]
    total_tokens: Option<u64>,
    prompt_tokens_details: Option<OpenAiPromptDetails>,
    /// Not OpenAI's: the gateway (and `LiteLLM`) report Anthropic's cache writes here.
    #[serde(deserialize_with = "count")]
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
struct OpenAiPromptDetails {
    #[serde(deserialize_with = "count")]
    cached_tokens: Option<u64>,
}

impl OpenAiUsage {
    /// A `usage` object (not `null`) at the scan's position, read as `serde_json` reads it:
    /// by the scan when each count is a plain integer or `null` and no member it reads comes
    /// twice (a stream's usage chunk, once a stream: 1.4K instructions by `serde_json`'s typed
    /// pass), else by `serde_json` from the value's span. `None` when the value is not JSON
    /// or not a usage `serde_json` reads (the reader's typed view then decides).
    pub(crate) fn read(scan: &mut Scan<'_>) -> Option<Self> {
        let start = scan.i;
        if let Some(usage) = Self::scanned(scan) {
            return Some(usage);
        }
        scan.i = start;
        serde_json::from_str(scan.span(2)?).ok()
    }

    /// The scan's reading (see [`Self::read`]); `None`: left to `serde_json`.
    fn scanned(scan: &mut Scan<'_>) -> Option<Self> {
        let mut u = Self::default();
        let mut seen = [false; 5];
        scan.members(|scan, key| {
            let (i, slot) = match key {
                b"prompt_tokens" => (0, &mut u.prompt_tokens),
                b"completion_tokens" => (1, &mut u.completion_tokens),
                b"total_tokens" => (2, &mut u.total_tokens),
                b"cache_creation_input_tokens" => (3, &mut u.cache_creation_input_tokens),
                b"prompt_tokens_details" => {
                    once(&mut seen[4])?;
                    if !scan.null()? {
                        let (mut cached, mut once_cached) = (None, false);
                        scan.members(|scan, key| {
                            if key != b"cached_tokens" {
                                return Some(false);
                            }
                            once(&mut once_cached)?;
                            scan.opt_u64(&mut cached)?;
                            Some(true)
                        })?;
                        u.prompt_tokens_details = Some(OpenAiPromptDetails {
                            cached_tokens: cached,
                        });
                    }
                    return Some(true);
                }
                _ => return Some(false),
            };
            once(&mut seen[i])?;
            scan.opt_u64(slot)?;
            Some(true)
        })?;
        Some(u)
    }
}

impl From<&OpenAiUsage> for Usage {
    fn from(u: &OpenAiUsage) -> Self {
        let prompt = u.prompt_tokens.unwrap_or(0);
        let completion = u.completion_tokens.unwrap_or(0);
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: u.total_tokens.unwrap_or(prompt.saturating_add(completion)),
            cached_tokens: u
                .prompt_tokens_details
                .as_ref()
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_write_tokens: u.cache_creation_input_tokens.unwrap_or(0),
        }
    }
}

/// Anthropic `usage` (in `message_start.message` and, cumulative, in `message_delta`).
/// Every field is optional because `message_delta` may carry only `output_tokens`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct AnthropicUsage {
    #[serde(deserialize_with = "count")]
    pub input_tokens: Option<u64>,
    #[serde(deserialize_with = "count")]
    pub output_tokens: Option<u64>,
    #[serde(deserialize_with = "count")]
    pub cache_creation_input_tokens: Option<u64>,
    #[serde(deserialize_with = "count")]
    pub cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Overwrites the fields that `later` carries (Anthropic's counts are cumulative).
    pub fn merge(&mut self, later: &AnthropicUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens = later
            .cache_creation_input_tokens
            .or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens = later
            .cache_read_input_tokens
            .or(self.cache_read_input_tokens);
    }
}

impl From<&AnthropicUsage> for Usage {
    fn from(u: &AnthropicUsage) -> Self {
        let cached = u.cache_read_input_tokens.unwrap_or(0);
        let written = u.cache_creation_input_tokens.unwrap_or(0);
        let prompt = u
            .input_tokens
            .unwrap_or(0)
            .saturating_add(written)
            .saturating_add(cached);
        let completion = u.output_tokens.unwrap_or(0);
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt.saturating_add(completion),
            cached_tokens: cached,
            cache_write_tokens: written,
        }
    }
}

/// Gemini `usageMetadata` (field names are the wire's).
#[allow(clippy::struct_field_names)]
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct GeminiUsage {
    #[serde(deserialize_with = "count")]
    pub(crate) prompt_token_count: Option<u64>,
    #[serde(deserialize_with = "count")]
    pub(crate) candidates_token_count: Option<u64>,
    #[serde(deserialize_with = "count")]
    pub(crate) total_token_count: Option<u64>,
    #[serde(deserialize_with = "count")]
    pub(crate) cached_content_token_count: Option<u64>,
    #[serde(deserialize_with = "count")]
    pub(crate) thoughts_token_count: Option<u64>,
    #[serde(deserialize_with = "count")]
    pub(crate) tool_use_prompt_token_count: Option<u64>,
}

impl From<&GeminiUsage> for Usage {
    fn from(u: &GeminiUsage) -> Self {
        let prompt = u
            .prompt_token_count
            .unwrap_or(0)
            .saturating_add(u.tool_use_prompt_token_count.unwrap_or(0));
        let completion = u
            .candidates_token_count
            .unwrap_or(0)
            .saturating_add(u.thoughts_token_count.unwrap_or(0));
        Self {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: u
                .total_token_count
                .unwrap_or(prompt.saturating_add(completion)),
            cached_tokens: u.cached_content_token_count.unwrap_or(0),
            cache_write_tokens: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failure is the test failing
    use super::*;

    #[test]
    fn counts_are_read_as_the_billing_reads_them() {
        // A float with no fraction is a count; anything else is none (0), never an error.
        let u: OpenAiUsage = serde_json::from_str(
            r#"{"prompt_tokens":12.0,"completion_tokens":4e0,"prompt_tokens_details":{"cached_tokens":2.0},"cache_creation_input_tokens":-1}"#,
        )
        .unwrap();
        let u = Usage::from(&u);
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.cached_tokens,
                u.cache_write_tokens
            ),
            (12, 4, 16, 2, 0)
        );
        for junk in [
            "1.5",
            "-3",
            "\"7\"",
            "true",
            "[1]",
            "{}",
            "1e30",
            "18446744073709551616",
        ] {
            let body = format!(r#"{{"prompt_tokens":{junk},"completion_tokens":5}}"#);
            let u = Usage::from(&serde_json::from_str::<OpenAiUsage>(&body).unwrap());
            assert_eq!((u.prompt_tokens, u.completion_tokens), (0, 5), "{junk}");
        }
        let a: AnthropicUsage =
            serde_json::from_str(r#"{"input_tokens":10.0,"output_tokens":"7"}"#).unwrap();
        assert_eq!((a.input_tokens, a.output_tokens), (Some(10), None));
        let g: GeminiUsage =
            serde_json::from_str(r#"{"promptTokenCount":3.0,"candidatesTokenCount":2.5}"#).unwrap();
        assert_eq!(Usage::from(&g).prompt_tokens, 3);
        assert_eq!(Usage::from(&g).completion_tokens, 0);
    }

    #[test]
    fn null_counts_are_zero_not_an_error() {
        let u: OpenAiUsage = serde_json::from_str(
            r#"{"prompt_tokens":3,"completion_tokens":null,"total_tokens":null}"#,
        )
        .unwrap();
        assert_eq!(Usage::from(&u).total_tokens, 3);
        let g: GeminiUsage = serde_json::from_str(r#"{"promptTokenCount":null}"#).unwrap();
        assert_eq!(Usage::from(&g), Usage::default());
    }

    #[test]
    fn anthropic_prompt_tokens_include_cache_reads_and_writes() {
        let u: AnthropicUsage = serde_json::from_str(
            r#"{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":100,"output_tokens":7}"#,
        )
        .unwrap();
        let u = Usage::from(&u);
        assert_eq!(
            (
                u.prompt_tokens,
                u.completion_tokens,
                u.total_tokens,
                u.cached_tokens
            ),
            (115, 7, 122, 100)
        );
        assert_eq!(u.cache_write_tokens, 5);
    }

    #[test]
    fn a_usage_read_by_the_scan_is_the_usage_serde_json_reads() {
        for body in [
            r#"{"prompt_tokens":12,"completion_tokens":47,"total_tokens":59}"#,
            r#"{ "prompt_tokens" : 3 , "completion_tokens" : null , "x" : [ 1 , { } ] }"#,
            r#"{"prompt_tokens":120,"prompt_tokens_details":{"cached_tokens":100,"audio_tokens":0},"cache_creation_input_tokens":15}"#,
            r#"{"prompt_tokens_details":null,"total_tokens":0}"#,
            r#"{"prompt_tokens_details":{}}"#,
            "{}",
            // left to serde_json: a float, a string, an overflow, a duplicate, an escaped key
            r#"{"prompt_tokens":12.0,"completion_tokens":"4"}"#,
            r#"{"prompt_tokens":18446744073709551616,"completion_tokens":1e1}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":2.0}}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":2}}"#,
            r#"{"prompt_tokens_details":{},"prompt_tokens_details":{}}"#,
            r#"{"prompt_\u0074okens":1}"#,
            r#"{"prompt_tokens_details":5}"#,
            r#"{"prompt_tokens":[1]}"#,
            r#"{"prompt_tokens":01}"#,
            "[1]",
            "nul",
        ] {
            let mut scan = Scan::new(body);
            let read = OpenAiUsage::read(&mut scan);
            assert_eq!(
                read,
                serde_json::from_str::<OpenAiUsage>(body).ok(),
                "{body}"
            );
            if read.is_some() {
                assert!(scan.at_end(), "{body}");
            }
        }
        let mut scan = Scan::new(r#"{"prompt_tokens":1},"b":2"#);
        assert!(OpenAiUsage::read(&mut scan).is_some());
        assert_eq!(&scan.s[scan.i..], r#","b":2"#);
    }

    #[test]
    fn openai_usage_reads_cached_tokens_and_the_cache_write_extension() {
        let u: OpenAiUsage = serde_json::from_str(
            r#"{"prompt_tokens":120,"completion_tokens":4,"total_tokens":124,
                "prompt_tokens_details":{"cached_tokens":100,"audio_tokens":0},
                "cache_creation_input_tokens":15}"#,
        )
        .unwrap();
        let u = Usage::from(&u);
        assert_eq!((u.cached_tokens, u.cache_write_tokens), (100, 15));
    }
}
