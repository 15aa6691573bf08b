//! OpenAI-compatible wire types: what clients send (`Deserialize`) and what the gateway
//! answers (`Serialize`). Field names and shapes follow the OpenAI API reference; fields
//! clients may send that Genie does not act on are accepted and ignored, as OpenAI does.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

/// `stop`: one string or a list of them.
#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

impl StopSpec {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            StopSpec::One(s) => vec![s],
            StopSpec::Many(v) => v,
        }
    }
}

/// One part of an array-form message `content`.
#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
pub struct ContentPart {
    /// `text` (the only kind a text model takes).
    #[serde(rename = "type")]
    #[schema(pattern = "^text$")]
    pub kind: String,
    #[serde(default)]
    #[schema(required = true, nullable = false)]
    pub text: Option<String>,
}

/// Message `content`: a string or an array of parts (only `text` parts are supported).
#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
pub struct RequestMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    #[schema(pattern = "^(system|developer|user|assistant|tool)$")]
    pub role: String,
    /// Required, except on an assistant message that carries `tool_calls`.
    #[serde(default)]
    pub content: Option<MessageContent>,
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant message's calls (the history of a tool-using conversation).
    #[serde(default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// A `tool` message: the call it answers.
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

/// `tools[i]`: a function the model may call.
#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    /// `function` (the only kind).
    #[serde(rename = "type")]
    #[schema(pattern = "^function$")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionDef {
    /// a-z, A-Z, 0-9, `_` and `-`, at most 64 characters.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The arguments' JSON schema (absent: no arguments).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<serde_json::Value>,
    /// Enforce the schema strictly (as `response_format`'s `strict`).
    #[serde(default)]
    pub strict: Option<bool>,
}

/// `tool_choice`: `none`, `auto`, `required`, or one named function.
#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum ToolChoice {
    Mode(String),
    Named(NamedToolChoice),
}

#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
pub struct NamedToolChoice {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: NamedFunction,
}

#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
pub struct NamedFunction {
    pub name: String,
}

/// A call the model made (in an answer) or made earlier (in the history).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FunctionCall {
    pub name: String,
    /// The arguments as a JSON string.
    pub arguments: String,
}

/// A streamed piece of a call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ToolCallDelta {
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub function: FunctionCallDelta,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct FunctionCallDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `response_format`: what the output must be.
#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ResponseFormat {
    /// Any text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON matching a schema.
    JsonSchema { json_schema: JsonSchemaFormat },
}

/// `response_format.json_schema`.
#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonSchemaFormat {
    /// a-z, A-Z, 0-9, `_` and `-`, at most 64 characters.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// The JSON schema (an object); absent: any JSON object.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub schema: Option<serde_json::Value>,
    /// Enforce every keyword (an unsupported one is a 400), and an object schema without
    /// `additionalProperties` allows no others; false: unsupported keywords are skipped.
    #[serde(default)]
    pub strict: Option<bool>,
}

/// Sampling fields shared by both endpoints.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CommonParams {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// Extension (vLLM, SGLang): keep only the k most likely tokens.
    pub top_k: Option<i64>,
    pub n: Option<u32>,
    pub stop: Option<StopSpec>,
    pub seed: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<BTreeMap<String, f32>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
    /// Extension (vLLM, SGLang, llama.cpp): keep generating past end-of-turn / eos, up to
    /// `max_tokens` (benchmark clients use it for fixed output lengths).
    pub ignore_eos: Option<bool>,
    /// Extension (Genie): a placement hint for this request.
    pub genie: Option<GenieHint>,
    /// Extension (vLLM, Genie): higher is placed first when requests wait; -100 to 100,
    /// unset = the API key's default (0 without one).
    pub priority: Option<i32>,
    /// What the output must be: text, any JSON object, or JSON matching a schema.
    pub response_format: Option<ResponseFormat>,
}

/// The `genie` request extension: where to run this request, overriding the plan.
/// OpenAI SDKs send it with `extra_body={"genie": {...}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenieHint {
    /// `true`: prefill on a prefill worker and ship the KV; `false`: prefill on the decode
    /// worker. Unset: the plan decides (by prompt length).
    #[serde(default)]
    pub disaggregate: Option<bool>,
    /// Run the prefill on this worker (an id from `GET /v1/workers` or `GET /v1/plans`).
    #[serde(default)]
    pub prefill_worker: Option<u64>,
    /// Run the decode on this worker.
    #[serde(default)]
    pub decode_worker: Option<u64>,
}

/// Declares a request struct holding the shared sampling fields beside its own, written
/// out (not `#[serde(flatten)]`) so a type error still reports which field it was.
macro_rules! request_with_common {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident : $t:ty,)* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Deserialize, PartialEq, utoipa::ToSchema)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
            #[serde(default)] #[schema(minimum = 1)] pub max_tokens: Option<u64>,
            #[serde(default)] #[schema(minimum = 0, maximum = 2)] pub temperature: Option<f32>,
            #[serde(default)] #[schema(exclusive_minimum = 0, maximum = 1)] pub top_p: Option<f32>,
            /// Extension: keep the k most likely tokens (0: no limit; at most the
            /// vocabulary size).
            #[serde(default)] #[schema(minimum = 0)] pub top_k: Option<i64>,
            /// Choices per prompt (at most `limits.max_n`).
            #[serde(default)] #[schema(minimum = 1)] pub n: Option<u32>,
            #[serde(default)] pub stop: Option<StopSpec>,
            #[serde(default)] pub seed: Option<i64>,
            #[serde(default)] #[schema(minimum = -2, maximum = 2)] pub presence_penalty: Option<f32>,
            #[serde(default)] #[schema(minimum = -2, maximum = 2)] pub frequency_penalty: Option<f32>,
            #[serde(default)] pub logit_bias: Option<BTreeMap<String, f32>>,
            #[serde(default)] pub stream: Option<bool>,
            #[serde(default)] pub stream_options: Option<StreamOptions>,
            #[serde(default)] pub user: Option<String>,
            #[serde(default)] pub ignore_eos: Option<bool>,
            #[serde(default)] pub genie: Option<GenieHint>,
            /// Extension: higher is placed first when requests wait.
            #[serde(default)] #[schema(minimum = -100, maximum = 100)] pub priority: Option<i32>,
            /// What the output must be: text, any JSON object (`json_object`), or JSON
            /// matching a schema (`json_schema`), enforced token by token.
            #[serde(default)] pub response_format: Option<ResponseFormat>,
        }

        impl $name {
            /// The shared sampling fields.
            pub fn common(&self) -> CommonParams {
                CommonParams {
                    max_tokens: self.max_tokens,
                    temperature: self.temperature,
                    top_p: self.top_p,
                    top_k: self.top_k,
                    n: self.n,
                    stop: self.stop.clone(),
                    seed: self.seed,
                    presence_penalty: self.presence_penalty,
                    frequency_penalty: self.frequency_penalty,
                    logit_bias: self.logit_bias.clone(),
                    stream: self.stream,
                    stream_options: self.stream_options.clone(),
                    user: self.user.clone(),
                    ignore_eos: self.ignore_eos,
                    genie: self.genie,
                    priority: self.priority,
                    response_format: self.response_format.clone(),
                }
            }
        }
    };
}

request_with_common! {
    /// `POST /v1/chat/completions`.
    pub struct ChatCompletionRequest {
        pub model: String,
        #[schema(min_items = 1)]
        pub messages: Vec<RequestMessage>,
        #[serde(default)]
        #[schema(minimum = 1)]
        pub max_completion_tokens: Option<u64>,
        #[serde(default)]
        pub logprobs: Option<bool>,
        /// Alternatives per position (needs `logprobs: true`).
        #[serde(default)]
        #[schema(maximum = 20)]
        pub top_logprobs: Option<u32>,
        /// Functions the model may call (described to it in a system block).
        #[serde(default)]
        pub tools: Option<Vec<Tool>>,
        /// `none`, `auto` (the default with tools), `required`, or
        /// `{"type": "function", "function": {"name": ...}}`; the last two constrain the
        /// answer to calls whose arguments match the function's `parameters`.
        #[serde(default)]
        pub tool_choice: Option<ToolChoice>,
        /// Several calls in one answer (default true).
        #[serde(default)]
        pub parallel_tool_calls: Option<bool>,
    }
}

/// `prompt`: a string, a list of strings, a token-id list, or a list of token-id lists.
#[derive(Debug, Clone, Deserialize, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum PromptSpec {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

request_with_common! {
    /// `POST /v1/completions`.
    pub struct CompletionRequest {
        pub model: String,
        pub prompt: PromptSpec,
        /// Completions-style logprobs: how many alternatives per position.
        #[serde(default)]
        #[schema(maximum = 20)]
        pub logprobs: Option<u32>,
        #[serde(default)]
        pub echo: Option<bool>,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// As OpenAI reports it: `cached_tokens` of the prompt came from a prefix cache.
    pub prompt_tokens_details: PromptTokensDetails,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct PromptTokensDetails {
    pub cached_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: prompt_tokens + completion_tokens,
            prompt_tokens_details: PromptTokensDetails::default(),
        }
    }

    pub fn with_cached(mut self, cached_tokens: u64) -> Self {
        self.prompt_tokens_details.cached_tokens = cached_tokens;
        self
    }
}

/// Chat logprobs of one token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<ChatTopLogprob>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ChatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct AssistantMessage {
    pub role: String,
    /// The text; null when the answer is tool calls.
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    pub message: AssistantMessage,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
    pub system_fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, ToSchema)]
pub struct ChatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ChatChunkChoice {
    pub index: u32,
    pub delta: ChatDelta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// One SSE `data:` payload of a streamed chat completion.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChunkChoice>,
    /// Only on the final usage chunk (`stream_options.include_usage`); `null` before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub system_fingerprint: String,
}

/// Completions-style logprobs. With `echo`, the prompt's tokens come first; the very
/// first has no logprob (`null`, nothing precedes it), as in OpenAI's legacy API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<BTreeMap<String, f32>>>,
    /// Each token's byte offset in the choice's `text`.
    pub text_offset: Vec<u32>,
}

impl CompletionLogprobs {
    /// `other`'s tokens after these.
    pub fn extend(&mut self, other: CompletionLogprobs) {
        self.tokens.extend(other.tokens);
        self.token_logprobs.extend(other.token_logprobs);
        self.top_logprobs.extend(other.top_logprobs);
        self.text_offset.extend(other.text_offset);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct CompletionChoice {
    pub index: u32,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
}

/// `text_completion` body, and (with `object` = `text_completion`) each streamed chunk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct Completion {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    pub system_fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ModelCard {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
    /// Extension: the model's context length in tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_model_len: Option<u64>,
    /// Extension: the GGUF's `general.architecture` (`llama`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Extension: how many tensors the file stores in each type (`{"Q4_1": 210, ...}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<std::collections::BTreeMap<String, usize>>,
    /// Extension: bytes of KV cache one token of context takes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_bytes_per_token: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ModelList {
    pub object: String,
    pub data: Vec<ModelCard>,
}

/// The body of every error answer: `{"error": {...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct ErrorBody {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_request_accepts_string_and_part_content_and_both_stop_forms() {
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"system","content":"be brief"},
                {"role":"user","content":[{"type":"text","text":"hi"}]}],
                "stop":"x","max_completion_tokens":5,"stream_options":{"include_usage":true}}"#,
        )
        .unwrap();
        assert_eq!(r.messages.len(), 2);
        assert_eq!(
            r.messages[1].content,
            Some(MessageContent::Parts(vec![ContentPart {
                kind: "text".into(),
                text: Some("hi".into())
            }]))
        );
        assert_eq!(r.common().stop.unwrap().into_vec(), vec!["x"]);
        assert_eq!(r.max_completion_tokens, Some(5));
        assert!(r.stream_options.unwrap().include_usage);
    }

    #[test]
    fn completion_prompt_forms() {
        for (body, want) in [
            (r#""a""#, PromptSpec::Text("a".into())),
            (
                r#"["a","b"]"#,
                PromptSpec::Texts(vec!["a".into(), "b".into()]),
            ),
            (r#"[1,2]"#, PromptSpec::Tokens(vec![1, 2])),
            (
                r#"[[1],[2]]"#,
                PromptSpec::TokenLists(vec![vec![1], vec![2]]),
            ),
        ] {
            let r: CompletionRequest =
                serde_json::from_str(&format!(r#"{{"model":"m","prompt":{body}}}"#)).unwrap();
            assert_eq!(r.prompt, want);
        }
    }

    #[test]
    fn chunk_omits_usage_until_the_final_chunk() {
        let c = ChatCompletionChunk {
            id: "x".into(),
            object: "chat.completion.chunk".into(),
            created: 1,
            model: "m".into(),
            choices: vec![],
            usage: None,
            system_fingerprint: "genie".into(),
        };
        assert!(!serde_json::to_string(&c).unwrap().contains("usage"));
    }
}
