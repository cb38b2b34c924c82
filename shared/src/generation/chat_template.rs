//! The model's chat template, rendered with minijinja (a Jinja2 implementation, as HF uses).
//!
//! GGUF and HF models ship their template (`tokenizer.chat_template`, or `chat_template` in
//! tokenizer_config.json); rendering it rather than hard-coding a format keeps any system prompt the
//! model was trained with (SmolLM2's default one, for example).

use minijinja::{Environment, Error, ErrorKind, context};

use super::{ChatMessage, GenerationError};

/// ChatML, for models that ship no template.
pub const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Instructions one rendering may run. A chat template comes from the model file, which is input
/// from outside; real templates spend a few thousand on a long conversation, so a template that
/// loops for ever (or nearly) stops with an error instead of holding a model thread.
const FUEL: u64 = 2_000_000;

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
}

fn raise_exception(message: String) -> Result<String, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compiles `source`.
    pub fn new(source: &str) -> Result<Self, GenerationError> {
        let mut env = Environment::new();
        env.set_fuel(Some(FUEL));
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| GenerationError::Format(format!("the model's chat template does not compile: {e}")))?;
        Ok(ChatTemplate { env })
    }

    /// The prompt for `messages`, ending where the assistant's answer starts.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, GenerationError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| GenerationError::Format(e.to_string()))?;
        template
            .render(context! { messages => minijinja::Value::from(minijinja::value::Serde(messages)), add_generation_prompt => true, bos_token => "", eos_token => "" })
            .map_err(|e| GenerationError::Request(format!("the chat template refused these messages: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::Role;

    #[test]
    fn chatml_renders_roles_and_the_generation_prompt() {
        let template = ChatTemplate::new(CHATML).unwrap();
        let prompt = template
            .render(&[
                ChatMessage::new(Role::System, "Be brief."),
                ChatMessage::new(Role::User, "Hi"),
            ])
            .unwrap();
        assert_eq!(
            prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn a_template_that_runs_too_long_is_stopped() {
        let endless =
            ChatTemplate::new("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}")
                .unwrap();
        let err = endless.render(&[ChatMessage::new(Role::User, "Hi")]).unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");
    }
}
