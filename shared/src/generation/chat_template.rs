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

/// Most bytes a rendering may write beyond [`OUTPUT_PER_INPUT_BYTE`] per byte of the messages: room
/// for a long default system prompt.
const OUTPUT_ALLOWANCE: usize = 1 << 20;

/// A template writes each message once or twice and some markup around it; one that writes far
/// more than its input (a loop printing a message thousands of times) is stopped when it passes
/// this many bytes per byte of the messages, plus [`OUTPUT_ALLOWANCE`], before it fills memory.
const OUTPUT_PER_INPUT_BYTE: usize = 4;

/// Where a rendering writes: refuses to grow past its limit.
struct Bounded {
    out: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.out.len() + buf.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("the chat template's output is over its limit"));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

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
        let input: usize = messages.iter().map(|m| m.content.len() + 16).sum();
        let mut output = Bounded {
            out: Vec::new(),
            limit: input
                .saturating_mul(OUTPUT_PER_INPUT_BYTE)
                .saturating_add(OUTPUT_ALLOWANCE),
            overflowed: false,
        };
        template
            .render_captured_to(
                context! { messages => minijinja::Value::from(minijinja::value::Serde(messages)), add_generation_prompt => true, bos_token => "", eos_token => "" },
                &mut output,
            )
            .map_err(|e| {
                if output.overflowed {
                    GenerationError::Format(format!(
                        "the model's chat template wrote more than {} bytes for {input} bytes of messages: the template is broken or hostile; serve a model with a sound template",
                        output.limit
                    ))
                } else {
                    GenerationError::Request(format!("the chat template refused these messages: {e}"))
                }
            })?;
        String::from_utf8(output.out)
            .map_err(|e| GenerationError::Format(format!("the chat template wrote invalid UTF-8: {e}")))
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

    #[test]
    fn a_template_that_writes_far_more_than_its_messages_is_stopped() {
        let flood = ChatTemplate::new(
            "{% for i in range(1000) %}{% for j in range(1000) %}{{ messages[0]['content'] }}{% endfor %}{% endfor %}",
        )
        .unwrap();
        let message = ChatMessage::new(Role::User, "x".repeat(1000));
        let err = flood.render(std::slice::from_ref(&message)).unwrap_err();
        assert!(err.to_string().contains("wrote more than"), "{err}");
        // A template writing each message a few times is fine.
        let twice = ChatTemplate::new("{{ messages[0]['content'] }}{{ messages[0]['content'] }}").unwrap();
        assert_eq!(twice.render(&[message]).unwrap().len(), 2000);
    }
}
