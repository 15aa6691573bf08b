//! The model's own chat template (Jinja, from GGUF `tokenizer.chat_template`), rendered
//! with minijinja. Syntax errors surface when the template is loaded, not per request.

use minijinja::{Environment, ErrorKind};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ChatTemplateError {
    #[error("the chat template does not parse: {0}")]
    Syntax(String),
    #[error("the chat template failed to render: {0}")]
    Render(String),
}

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are visible to the template.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ChatTemplateError> {
        let mut env = Environment::new();
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| ChatTemplateError::Syntax(e.to_string()))?;
        Ok(ChatTemplate {
            env,
            bos: bos_token.into(),
            eos: eos_token.into(),
        })
    }

    /// A ChatML template for models that ship none.
    pub fn chatml() -> Self {
        Self::new(CHATML, "", "").expect("the built-in ChatML template parses")
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatTemplateError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ChatTemplateError::Render(e.to_string()))?;
        tmpl.render(minijinja::context! {
            messages => messages
                .iter()
                .map(|m| minijinja::Value::from_pairs([("role", m.role.as_str()), ("content", m.content.as_str())]))
                .collect::<Vec<_>>(),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| {
            // raise_exception's message is the template author's: show it plainly.
            let detail = e.detail().map(str::to_string).unwrap_or_else(|| e.to_string());
            ChatTemplateError::Render(detail)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(c: &str) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: c.into(),
        }
    }

    #[test]
    fn chatml_renders_turns_and_generation_prompt() {
        let t = ChatTemplate::chatml();
        let s = t.render(&[user("hi")], true).unwrap();
        assert_eq!(s, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
        assert!(!t
            .render(&[user("hi")], false)
            .unwrap()
            .ends_with("assistant\n"));
    }

    #[test]
    fn syntax_errors_are_reported_at_load_and_raise_exception_at_render() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(ChatTemplateError::Syntax(_))
        ));
        let t = ChatTemplate::new(
            "{% if messages[0]['role'] != 'system' %}{{ raise_exception('first message must be system') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let err = t.render(&[user("x")], true).unwrap_err().to_string();
        assert!(err.contains("first message must be system"), "{err}");
    }

    #[test]
    fn bos_and_eos_are_visible() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
            "<s>",
            "</s>",
        )
        .unwrap();
        assert_eq!(t.render(&[user("x")], false).unwrap(), "<s>x</s>");
    }
}
