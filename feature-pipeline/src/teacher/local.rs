//! The local teacher: the SLM itself, in-process. Offline and free, so it is the embedded default;
//! it is also much weaker than a real teacher, which the quality step's rules and the dataset card
//! make visible. Generation runs on the blocking pool.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use engram_shared::generation::{Flow, GenerationParams, Generator, GeneratorOptions, WeightFormat};

use super::{Teacher, TeacherError, TeacherReply, TeacherRequest};

/// The SLM as a teacher.
pub struct LocalTeacher {
    generator: Arc<Generator>,
    id: String,
}

impl LocalTeacher {
    /// Loads the GGUF at `path`.
    pub fn load(path: &Path, weights: WeightFormat) -> anyhow::Result<Self> {
        let generator = Generator::load(path, GeneratorOptions { weights }).map_err(|e| {
            anyhow::anyhow!(
                "cannot load the local teacher from {}: {e}. Run scripts/fetch-models.sh or set ENGRAM_TEACHER_MODEL_PATH",
                path.display()
            )
        })?;
        let id = format!("local:{}:{weights}", generator.model_id());
        Ok(Self {
            generator: Arc::new(generator),
            id,
        })
    }
}

#[async_trait]
impl Teacher for LocalTeacher {
    fn id(&self) -> &str {
        &self.id
    }

    async fn ask(&self, request: &TeacherRequest) -> Result<TeacherReply, TeacherError> {
        let generator = self.generator.clone();
        let messages = request.messages.clone();
        let params = GenerationParams {
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            seed: request.seed,
            repetition_penalty: 1.1,
            ..GenerationParams::default()
        };
        let completion =
            tokio::task::spawn_blocking(move || generator.generate(&messages, &params, |_| Flow::Continue))
                .await
                .map_err(|e| TeacherError::Local(e.to_string()))?
                .map_err(|e| TeacherError::Local(e.to_string()))?;
        Ok(TeacherReply {
            text: completion.text,
            prompt_tokens: completion.usage.prompt_tokens as u64,
            completion_tokens: completion.usage.completion_tokens as u64,
        })
    }
}
