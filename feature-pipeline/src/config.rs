//! The pipeline's typed configuration: flags, with `ENGRAM_*` environment variables as defaults.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use engram_shared::config::StorageConfig;

/// engram's offline worker: extracts documents, builds the vector index, datasets and models.
///
/// With no storage variable set, every store lives under ENGRAM_HOME (no server needed); each URL
/// variable moves one store to its production backend.
#[derive(Debug, Parser)]
#[command(name = "feature-pipeline", version, about, long_about)]
pub struct Config {
    /// Where the stores are.
    #[command(flatten)]
    pub storage: StorageConfig,

    /// Log filter (tracing's EnvFilter syntax), e.g. `info` or `engram_shared=debug`.
    #[arg(long, env = "ENGRAM_LOG", default_value = "info,qdrant_edge=error", global = true)]
    pub log: String,

    /// Log lines as `text` (coloured only on a terminal) or `json` (one object per line).
    #[arg(long, env = "ENGRAM_LOG_FORMAT", value_enum, default_value_t, global = true)]
    pub log_format: engram_shared::logging::LogFormat,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The pipeline's commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open every store (creating embedded ones, migrating the registry) and print what it holds.
    Status(StatusArgs),
    /// Read raw documents (Notion, web pages, local files) into the document store.
    #[command(subcommand)]
    Extract(ExtractCommand),
    /// Report the corpus's length and quality distributions, sources, domains and failed crawls
    /// (HTML report with charts, stored with the run's artifacts).
    Explore(ExploreArgs),
    /// Recompute the heuristic quality score of stored documents.
    Score(ScoreArgs),
    /// Choose the documents later stages read: drop short, long, low-quality and duplicate ones.
    Filter(FilterArgs),
    /// Chunk, embed and index the filtered documents as a new index version, then make it live
    /// (or, with --rollback, make an earlier version live again).
    Index(IndexArgs),
    /// List the index versions and which one is live.
    Indexes(IndexesArgs),
    /// Measure the system against question sets.
    #[command(subcommand)]
    Eval(EvalCommand),
    /// Model versions in the registry: register a model file, promote it to production.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Build the summarization dataset from the filtered documents: distil summaries with the
    /// teacher, check their quality, split by document, publish a dataset version.
    Dataset(Box<DatasetArgs>),
    /// List dataset versions with their lineage, or export one as a plain directory.
    Datasets(DatasetsArgs),
    /// Fine-tune the SLM on a dataset version with LoRA, write the adapter (PEFT layout) and the
    /// merged model (HF layout and GGUF), and register it as a new model version with its lineage.
    Train(Box<TrainArgs>),
    /// Measure training speed and peak memory on a fixed random workload (scripts/bench/train.sh).
    #[command(hide = true)]
    BenchTrain(BenchTrainArgs),
    /// Run every configured stage in order as one recorded run; unchanged steps are skipped.
    Run(RunArgs),
    /// List pipeline runs with their steps, status and durations.
    Runs(RunsArgs),
}

/// Which teacher writes the summaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TeacherKind {
    /// The local SLM, in-process (offline; weak).
    Local,
    /// An OpenAI-compatible chat endpoint (ENGRAM_TEACHER_URL).
    Openai,
}

/// The teacher LLM.
#[derive(Debug, Clone, Args)]
pub struct TeacherArgs {
    /// Which teacher: `openai` when ENGRAM_TEACHER_URL is set, else `local`.
    #[arg(long, env = "ENGRAM_TEACHER")]
    pub teacher: Option<TeacherKind>,

    /// The OpenAI-compatible API base, e.g. https://api.openai.com/v1 or http://127.0.0.1:8080/v1.
    #[arg(long, env = "ENGRAM_TEACHER_URL")]
    pub teacher_url: Option<String>,

    /// The model the endpoint should use.
    #[arg(long, env = "ENGRAM_TEACHER_MODEL", default_value = "gpt-4o-mini")]
    pub teacher_model: String,

    /// The endpoint's API key (sent as a bearer token; never logged).
    #[arg(long, env = "ENGRAM_TEACHER_API_KEY", hide_env_values = true)]
    pub teacher_api_key: Option<String>,

    /// JSON object merged into every request body (endpoint-specific options), e.g.
    /// `{"retrieval": {"enabled": false}}` for engram's own inference-service.
    #[arg(long, env = "ENGRAM_TEACHER_EXTRA_BODY")]
    pub teacher_extra_body: Option<String>,

    /// Calls in flight at once to the endpoint (default 4), or local generations at once (default 1).
    #[arg(long, env = "ENGRAM_TEACHER_CONCURRENCY")]
    pub teacher_concurrency: Option<usize>,

    /// Retries of a failed call (429, 5xx, timeouts), with exponential backoff and jitter.
    #[arg(long, env = "ENGRAM_TEACHER_RETRIES", default_value_t = 5)]
    pub teacher_retries: u32,

    /// Seconds one call may take.
    #[arg(long, env = "ENGRAM_TEACHER_TIMEOUT_SECS", default_value_t = 120)]
    pub teacher_timeout_secs: u64,

    /// First retry wait in milliseconds (doubled per retry).
    #[arg(long, env = "ENGRAM_TEACHER_BACKOFF_MS", default_value_t = 1000)]
    pub teacher_backoff_ms: u64,

    /// The local teacher's GGUF file.
    #[arg(
        long,
        env = "ENGRAM_TEACHER_MODEL_PATH",
        default_value = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    )]
    pub teacher_model_path: PathBuf,

    /// How the local teacher holds its weights: packed (default: the stored blocks in engram's
    /// exact kernels), f32, or candle's q8_0, q4_0, f16 or as-stored.
    #[arg(long, env = "ENGRAM_TEACHER_WEIGHTS", default_value = "packed")]
    pub teacher_weights: engram_shared::generation::WeightFormat,

    /// USD per million prompt tokens, for the run's cost estimate.
    #[arg(long, env = "ENGRAM_TEACHER_PRICE_PROMPT", default_value_t = 0.0)]
    pub teacher_price_prompt: f64,

    /// USD per million completion tokens.
    #[arg(long, env = "ENGRAM_TEACHER_PRICE_COMPLETION", default_value_t = 0.0)]
    pub teacher_price_completion: f64,
}

/// Options of `dataset`.
#[derive(Debug, Clone, Args)]
pub struct DatasetArgs {
    /// The teacher.
    #[command(flatten)]
    pub teacher: TeacherArgs,

    /// The embedding model (faithfulness checks).
    #[command(flatten)]
    pub embedding: EmbeddingArgs,

    /// Summaries per document.
    #[arg(long, env = "ENGRAM_DATASET_SUMMARIES", default_value_t = 4)]
    pub summaries: usize,

    /// Lowest sampling temperature (summaries spread evenly up to --temperature-max).
    #[arg(long, default_value_t = 0.3)]
    pub temperature_min: f64,

    /// Highest sampling temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature_max: f64,

    /// Character budget of a summary (asked for in the prompt, enforced by the quality step).
    #[arg(long, env = "ENGRAM_DATASET_BUDGET_CHARS", default_value_t = 800)]
    pub budget_chars: usize,

    /// Most tokens the teacher may write per summary.
    #[arg(long, env = "ENGRAM_DATASET_MAX_TOKENS", default_value_t = 256)]
    pub max_tokens: usize,

    /// Document text beyond this many characters is cut before it goes to the teacher.
    #[arg(long, default_value_t = 4000)]
    pub max_document_chars: usize,

    /// Documents distilled at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,

    /// Largest share of a summary's word 8-grams found verbatim in its document.
    #[arg(long, default_value_t = 0.7)]
    pub max_copied: f64,

    /// Smallest cosine similarity between a summary's and its document's embeddings. With
    /// all-MiniLM-L6-v2 on the sample notes, the local teacher's on-topic (if partial) summaries
    /// score 0.45 to 0.6 and its off-topic inventions 0.04 to 0.25.
    #[arg(long, default_value_t = 0.45)]
    pub min_faithfulness: f32,

    /// Largest word-3-gram Jaccard similarity between two kept summaries of one document.
    #[arg(long, default_value_t = 0.85)]
    pub max_sibling_similarity: f64,

    /// Keep at most this many summaries per document, the most faithful of those that pass
    /// (best-of-n: distil more with --summaries, keep the best). Unset: every one that passes.
    #[arg(long)]
    pub keep_best: Option<usize>,

    /// Also ask the teacher to score each summary from 1 to 5, dropping those under --judge-min.
    #[arg(long)]
    pub judge: bool,

    /// Lowest judge score kept.
    #[arg(long, default_value_t = 3)]
    pub judge_min: u8,

    /// Chunks per document whose fact sentence the teacher writes a question for (the `qa`
    /// configuration: the chunks with the most numbers and names); 0 leaves the `qa` task out.
    #[arg(long, env = "ENGRAM_DATASET_QA_CHUNKS", default_value_t = 2)]
    pub qa_chunks_per_document: usize,

    /// Questions asked per fact sentence (the best that passes the checks is kept).
    #[arg(long, default_value_t = 3)]
    pub qa_samples: usize,

    /// Lowest temperature of the question samples (spread evenly up to --qa-temperature-max).
    #[arg(long, default_value_t = 0.0)]
    pub qa_temperature_min: f64,

    /// Highest temperature of the question samples.
    #[arg(long, default_value_t = 0.4)]
    pub qa_temperature_max: f64,

    /// Most tokens the teacher may write per question.
    #[arg(long, default_value_t = 40)]
    pub qa_max_tokens: usize,

    /// Longest fact sentence (the answer) asked about, in characters.
    #[arg(long, default_value_t = 300)]
    pub qa_max_answer_chars: usize,

    /// Smallest cosine similarity between a question and its sentence (all-MiniLM-L6-v2).
    #[arg(long, default_value_t = 0.45)]
    pub qa_min_relevance: f32,

    /// Sources in each `qa` row's prompt (keep it at the service's ENGRAM_TOP_K).
    #[arg(long, default_value_t = 4)]
    pub qa_sources: usize,

    /// Share of kept questions also asked over sources that do not answer them (the answer is then
    /// the service's "the notes do not say").
    #[arg(long, default_value_t = 0.25)]
    pub qa_unanswerable: f64,

    /// Chunk size of the `qa` sources, in the embedding model's tokens: the index's setting (same
    /// variable), so the sources are chunks the service retrieves.
    #[arg(long, env = "ENGRAM_CHUNK_TOKENS", default_value_t = 96)]
    pub chunk_tokens: usize,

    /// Tokens shared by consecutive chunks: the index's setting (same variable).
    #[arg(long, env = "ENGRAM_CHUNK_OVERLAP", default_value_t = 16)]
    pub chunk_overlap: usize,

    /// Share of documents in the validation split.
    #[arg(long, default_value_t = 0.1)]
    pub validation: f64,

    /// Share of documents in the test split.
    #[arg(long, default_value_t = 0.1)]
    pub test: f64,

    /// Seed of the sampling seeds and of the split.
    #[arg(long, env = "ENGRAM_DATASET_SEED", default_value_t = 42)]
    pub seed: u64,

    /// Also upload the version to this Hugging Face Hub dataset repo (`user/name`; needs
    /// ENGRAM_HF_TOKEN).
    #[arg(long)]
    pub push_hub: Option<String>,

    /// The Hub's API address.
    #[arg(long, env = "ENGRAM_HF_ENDPOINT", default_value = "https://huggingface.co")]
    pub hub_endpoint: String,

    /// A Hub token with write access (never logged).
    #[arg(long, env = "ENGRAM_HF_TOKEN", hide_env_values = true)]
    pub hub_token: Option<String>,

    /// Run every step even when an identical one succeeded before.
    #[arg(long)]
    pub no_cache: bool,
}

/// Options of `datasets`.
#[derive(Debug, Args)]
pub struct DatasetsArgs {
    /// Export instead of listing.
    #[command(subcommand)]
    pub command: Option<DatasetsCommand>,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `datasets` subcommands.
#[derive(Debug, Subcommand)]
pub enum DatasetsCommand {
    /// Write a dataset version out of the artifact store as a plain directory
    /// (`datasets.load_dataset(DIR)` reads it).
    Export {
        /// A version number, or `latest`.
        version: String,
        /// A new or empty directory.
        dir: PathBuf,
    },
}

/// Options of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The stages and their settings (see deploy/pipeline.toml); without it: filter, dataset and
    /// index over what is stored.
    #[arg(long, env = "ENGRAM_PIPELINE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Run every step even when an identical one succeeded before.
    #[arg(long)]
    pub no_cache: bool,
}

/// Options of `runs`.
#[derive(Debug, Args)]
pub struct RunsArgs {
    /// How many runs, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: i64,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The model commands.
#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Store a model (GGUF file or HF-layout directory) in the artifact store and record it as a
    /// new model version.
    Register(RegisterModelArgs),
    /// List model versions and which one is in production.
    List(ListModelsArgs),
    /// Point `production` at a model version (the service picks it up).
    Promote(PromoteArgs),
    /// Point `production` back at the version it named before the last move.
    Rollback,
    /// Merge a LoRA adapter in PEFT's layout (trained by `peft` or by `train`) into its base model
    /// and register the result as a new model version.
    ImportAdapter(ImportAdapterArgs),
    /// Write a registered model into a new directory for use elsewhere: the served file
    /// (`model.gguf` or an HF directory), and for a fine-tuned model its merged HF directory
    /// (`hf/`), PEFT adapter (`adapter/`) and training report (`report/`).
    Export(ExportModelArgs),
    /// Write a GGUF model as an HF-layout directory (f32 safetensors, config, tokenizer, chat
    /// template): the starting point a fine-tuning run trains from.
    ExportHf(ExportHfArgs),
}

/// Options of `models export-hf`.
#[derive(Debug, Args)]
pub struct ExportHfArgs {
    /// The llama-family GGUF file.
    pub gguf: PathBuf,
    /// A new or empty directory.
    pub dir: PathBuf,
}

/// Options of `models list`.
#[derive(Debug, Args)]
pub struct ListModelsArgs {
    /// Print JSON (every version with its aliases, lineage and metrics).
    #[arg(long)]
    pub json: bool,
}

/// Options of `models promote`.
#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The model version (`3` or `v3`).
    pub version: String,
}

/// Options of `models import-adapter`.
#[derive(Debug, Args)]
pub struct ImportAdapterArgs {
    /// The adapter directory (adapter_config.json, adapter_model.safetensors).
    pub adapter: PathBuf,

    /// The base model it was trained on: a model version, or a GGUF file / HF-layout directory.
    #[arg(long)]
    pub base: String,

    /// Name of the registered model (default: the adapter directory's name).
    #[arg(long)]
    pub name: Option<String>,

    /// Block type of the merged projections when the base is a GGUF.
    #[arg(long, value_enum, default_value = "q8-0")]
    pub merged_blocks: crate::train::merge::MergedBlocks,
}

/// Options of `models export`.
#[derive(Debug, Args)]
pub struct ExportModelArgs {
    /// The model version (`3`, `v3`) or `production`.
    pub version: String,
    /// A new or empty directory.
    pub dir: PathBuf,
}

/// Options of `models register`.
#[derive(Debug, Args)]
pub struct RegisterModelArgs {
    /// The model: a llama-family GGUF file, or an HF-layout directory (config.json,
    /// model.safetensors, tokenizer.json, tokenizer_config.json).
    pub path: PathBuf,

    /// Its name (default: the file name).
    #[arg(long)]
    pub name: Option<String>,

    /// Point the `production` alias at it: the inference service picks it up.
    #[arg(long)]
    pub promote: bool,
}

/// The embedding model both the index and its readers use.
#[derive(Debug, Clone, Args)]
pub struct EmbeddingArgs {
    /// A BERT-family model directory in Hugging Face layout (config.json, model.safetensors,
    /// tokenizer.json); `scripts/fetch-models.sh` puts all-MiniLM-L6-v2 in models/.
    #[arg(long, env = "ENGRAM_EMBEDDING_MODEL", default_value = "models/all-MiniLM-L6-v2")]
    pub embedding_model: PathBuf,
}

/// Options of `index`.
#[derive(Debug, Args)]
pub struct IndexArgs {
    /// The embedding model.
    #[command(flatten)]
    pub embedding: EmbeddingArgs,

    /// Target chunk size, in the embedding model's tokens (at most its maximum, 256 for MiniLM).
    /// 96 retrieved best on the sample questions (README, "Choosing the settings").
    #[arg(long, env = "ENGRAM_CHUNK_TOKENS", default_value_t = 96)]
    pub chunk_tokens: usize,

    /// Tokens shared by consecutive chunks.
    #[arg(long, env = "ENGRAM_CHUNK_OVERLAP", default_value_t = 16)]
    pub chunk_overlap: usize,

    /// Ready index versions kept for rollback (the live one is never dropped).
    #[arg(long, env = "ENGRAM_INDEX_KEEP", default_value_t = 3)]
    pub keep: usize,

    /// Instead of building, move the alias back to the previous ready version (or to --to).
    #[arg(long)]
    pub rollback: bool,

    /// With --rollback: the version to make live.
    #[arg(long, requires = "rollback")]
    pub to: Option<i64>,

    /// Embed only shard i of N (documents by id hash) and store the vectors; build nothing. One
    /// pod of an Indexed Job each; then `--merge-shards N` once.
    #[arg(long, env = "ENGRAM_INDEX_SHARD", conflicts_with_all = ["rollback", "merge_shards"])]
    pub shard: Option<crate::steps::shard::Shard>,

    /// Build the version from the vectors of N shards (`--shard i/N`), waiting for them up to
    /// --wait-secs; the alias moves once.
    #[arg(long, conflicts_with = "rollback")]
    pub merge_shards: Option<usize>,

    /// With --merge-shards: how long to wait for unfinished shards.
    #[arg(long, default_value_t = 0, requires = "merge_shards")]
    pub wait_secs: u64,
}

/// Options of `indexes`.
#[derive(Debug, Args)]
pub struct IndexesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The evaluations.
#[derive(Debug, Subcommand)]
pub enum EvalCommand {
    /// Retrieval quality of the live index: hit@1/3/5 and MRR over a question set.
    Retrieval(EvalRetrievalArgs),
    /// Summaries of a dataset's test split by each model (greedy): ROUGE-1/2/L, length,
    /// faithfulness, with a bootstrap interval of the ROUGE-L difference; stored on each version.
    Model(EvalModelArgs),
    /// Answers over a question set through the service's path (retrieval, abstention, prompt,
    /// model): retrieval hit, correctness (every fact), citation correctness, abstention on
    /// unanswerable questions and false abstention, per model; stored on each registered version.
    Answers(EvalAnswersArgs),
}

/// Options of `eval answers`.
#[derive(Debug, Clone, Args)]
pub struct EvalAnswersArgs {
    /// A TSV file: `question<TAB>expected title, url or none<TAB>fact<TAB>…` per line (a fact is
    /// text, or `re:` and a regex, matched ignoring case); see samples/answers.tsv.
    #[arg(long)]
    pub questions: PathBuf,

    /// The models, comma-separated: versions (`3`, `v3`), `production`, or model files. Default:
    /// production and, when it is fine-tuned, its base.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,

    /// Chunks retrieved per question (the service's ENGRAM_TOP_K).
    #[arg(long, default_value_t = 4)]
    pub top_k: usize,

    /// The closeness below which the answer is that the notes do not say (the service's
    /// ENGRAM_MIN_RELEVANCE); -1 never abstains.
    #[arg(long, default_value_t = engram_shared::answers::abstain::DEFAULT_MIN_RELEVANCE, allow_negative_numbers = true)]
    pub min_relevance: f32,

    /// Most tokens per answer.
    #[arg(long, default_value_t = 160)]
    pub max_tokens: usize,

    /// How answers are made (the service's ENGRAM_ANSWER_MODE): `generate` (the model writes
    /// them) or `extract` (the sources' sentence the model judges to answer it, or the abstention).
    #[arg(long, default_value_t = engram_shared::answers::AnswerMode::default())]
    pub answer: engram_shared::answers::AnswerMode,

    /// How `extract` ranks the sentences: `channel` (how likely the question is as the one each
    /// answers, as the service does), or to measure against: `pmi` (how much the question raises
    /// each one), `likelihood` (how likely each is after the prompt).
    #[arg(long, default_value_t = engram_shared::answers::extract::Scoring::default())]
    pub extract_scoring: engram_shared::answers::extract::Scoring,

    /// In `extract`, how close a sentence read under its headings must be to the question (the
    /// embedder's cosine) to be a candidate (the service's ENGRAM_MIN_SENTENCE_RELEVANCE; -1: any).
    #[arg(long, default_value_t = engram_shared::answers::closeness::DEFAULT_MIN, allow_negative_numbers = true)]
    pub min_sentence_relevance: f32,

    /// In `extract`, how much that cosine adds to the model's score per token (0: the model
    /// alone ranks the sentences).
    #[arg(long, default_value_t = engram_shared::answers::closeness::DEFAULT_WEIGHT)]
    pub sentence_weight: f32,

    /// Whether the names a question gives (a capitalised word inside it, a number, an
    /// identifier) must be stated in a source for it to answer (the service's
    /// ENGRAM_NAMES_MUST_MATCH): with none of the retrieved sources stating one, the notes do not
    /// say; in `extract`, a sentence's own source must state them all.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub names_must_match: bool,

    /// The embedding model (must be the one the index was built with).
    #[command(flatten)]
    pub embedding: EmbeddingArgs,

    /// Print every question's answer and marks as JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Options of `eval model`.
#[derive(Debug, Clone, Args)]
pub struct EvalModelArgs {
    /// The dataset version whose test split is used: a number or `latest`.
    #[arg(long, default_value = "latest")]
    pub dataset: String,

    /// The models, comma-separated: versions (`3`, `v3`), `production`, or model files. Default:
    /// production and, when it is fine-tuned, its base.
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,

    /// Most tokens per answer (default: the teacher's limit recorded with the dataset, else 256).
    #[arg(long)]
    pub max_tokens: Option<usize>,

    /// The embedding model (faithfulness).
    #[command(flatten)]
    pub embedding: EmbeddingArgs,

    /// Also write the report (markdown, chart, answers) into this new directory.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Options of `eval retrieval`.
#[derive(Debug, Args)]
pub struct EvalRetrievalArgs {
    /// A TSV file: `question<TAB>expected title or url` per line, `#` comments.
    #[arg(long)]
    pub questions: PathBuf,

    /// The embedding model (must be the one the index was built with).
    #[command(flatten)]
    pub embedding: EmbeddingArgs,

    /// Which retrieval to measure.
    #[arg(long, value_enum, default_value_t = RetrievalMode::Hybrid)]
    pub mode: RetrievalMode,

    /// RRF rank constant.
    #[arg(long, default_value_t = 60.0)]
    pub rrf_k: f32,

    /// Weight of the dense list in the fusion.
    #[arg(long, default_value_t = 1.0)]
    pub dense_weight: f32,

    /// Weight of the BM25 list in the fusion.
    #[arg(long, default_value_t = 1.5)]
    pub sparse_weight: f32,

    /// Print per-question results and the metrics as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Retrieval modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RetrievalMode {
    /// Dense and BM25, fused by RRF.
    Hybrid,
    /// Dense embeddings only.
    Dense,
    /// BM25 only.
    Sparse,
}

/// Options of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The sources `extract` reads.
#[derive(Debug, Subcommand)]
pub enum ExtractCommand {
    /// A Notion "Markdown & CSV" export (a folder or the .zip Notion gives you), or with `--api` a
    /// Notion database through Notion's REST API.
    Notion(NotionArgs),
    /// Web pages: the links found in stored documents (the default), or `--url`/`--urls-file`.
    Crawl(CrawlArgs),
    /// Local markdown, HTML and text files, each one a document with a file:// url.
    Files(FilesArgs),
}

/// Limits every extractor shares.
#[derive(Debug, Clone, Args)]
pub struct ExtractLimits {
    /// Largest file or page read, in bytes; a larger one is skipped and reported.
    #[arg(long, env = "ENGRAM_MAX_DOCUMENT_BYTES", default_value_t = 5 * 1024 * 1024)]
    pub max_bytes: u64,
}

/// Options of `extract notion`.
#[derive(Debug, Args)]
pub struct NotionArgs {
    /// Export folders or .zip files (Notion's "Markdown & CSV" export).
    #[arg(required_unless_present = "api")]
    pub paths: Vec<PathBuf>,

    /// Read through Notion's REST API instead of an export (needs ENGRAM_NOTION_TOKEN and --database).
    #[arg(long, requires = "database")]
    pub api: bool,

    /// With --api: the id of the Notion database whose pages to read (the 32 hex digits in its URL).
    #[arg(long)]
    pub database: Option<String>,

    /// With --api: the integration token (an internal integration's secret).
    #[arg(long, env = "ENGRAM_NOTION_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// With --api: the API's base URL.
    #[arg(long, env = "ENGRAM_NOTION_API_URL", default_value = "https://api.notion.com")]
    pub api_url: String,

    /// With --api: the least time between two API requests, in milliseconds (Notion allows an
    /// average of three requests per second per integration).
    #[arg(long, default_value_t = 350)]
    pub api_interval_ms: u64,

    /// Size limits.
    #[command(flatten)]
    pub limits: ExtractLimits,
}

/// Options of `extract crawl`.
#[derive(Debug, Args)]
pub struct CrawlArgs {
    /// A URL to fetch (repeatable). With neither --url nor --urls-file, the web links found in
    /// stored documents are fetched.
    #[arg(long = "url")]
    pub urls: Vec<String>,

    /// A file with one URL per line (`#` starts a comment).
    #[arg(long)]
    pub urls_file: Option<PathBuf>,

    /// Also fetch the web links of stored documents when --url or --urls-file is given.
    #[arg(long)]
    pub from_documents: bool,

    /// Pages fetched at the same time, over all hosts.
    #[arg(long, env = "ENGRAM_CRAWL_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,

    /// Least time between two requests to the same host, in milliseconds.
    #[arg(long, env = "ENGRAM_CRAWL_HOST_DELAY_MS", default_value_t = 500)]
    pub host_delay_ms: u64,

    /// Time allowed for one request, in seconds.
    #[arg(long, env = "ENGRAM_CRAWL_TIMEOUT_SECS", default_value_t = 15.0)]
    pub timeout_secs: f64,

    /// Retries after a timeout, a connection error, a 429 or a 5xx (with exponential backoff).
    #[arg(long, default_value_t = 2)]
    pub retries: u32,

    /// The User-Agent sent, and matched against robots.txt rules.
    #[arg(long, env = "ENGRAM_CRAWL_USER_AGENT", default_value = concat!("engram-crawler/", env!("CARGO_PKG_VERSION")))]
    pub user_agent: String,

    /// Send every request through this HTTP proxy (e.g. `http://proxy.internal:3128`).
    #[arg(long, env = "ENGRAM_CRAWL_PROXY")]
    pub proxy: Option<String>,

    /// Also crawl loopback, private (RFC 1918, fc00::/7) and link-local addresses (cloud metadata
    /// included): for an intranet, on purpose. Without it such links are refused, after DNS and on
    /// every redirect, and the crawl report says why.
    #[arg(long, env = "ENGRAM_CRAWL_ALLOW_PRIVATE")]
    pub allow_private_hosts: bool,

    /// Size limits.
    #[command(flatten)]
    pub limits: ExtractLimits,
}

/// Options of `extract files`.
#[derive(Debug, Args)]
pub struct FilesArgs {
    /// Folders (read recursively) or single files.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,

    /// Size limits.
    #[command(flatten)]
    pub limits: ExtractLimits,
}

/// Options of `explore`.
#[derive(Debug, Args)]
pub struct ExploreArgs {
    /// Where to write the HTML report and its charts (default: ENGRAM_HOME/reports/<run id>).
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// Rescore every document, not only those without a score from the current heuristic version
    /// (the judge's scores are then asked again, from the teacher's cache where it has them).
    #[arg(long)]
    pub all: bool,

    /// Also have the teacher judge the documents whose heuristic score is in the uncertain band:
    /// a rating from 1 to 5 with a one-line reason, stored as their quality score.
    #[arg(long)]
    pub judge: bool,

    /// The uncertain band of heuristic scores the judge is asked about: `low,high`.
    #[arg(long, value_delimiter = ',', default_values_t = [0.3, 0.7])]
    pub judge_band: Vec<f64>,

    /// The teacher that judges.
    #[command(flatten)]
    pub teacher: TeacherArgs,
}

/// Options of `filter`.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct FilterArgs {
    /// Fewest words a document needs.
    #[arg(long, env = "ENGRAM_FILTER_MIN_WORDS", default_value_t = 40)]
    pub min_words: usize,

    /// Most words a document may have.
    #[arg(long, env = "ENGRAM_FILTER_MAX_WORDS", default_value_t = 50_000)]
    pub max_words: usize,

    /// Lowest quality score kept (0 to 1).
    #[arg(long, env = "ENGRAM_FILTER_MIN_QUALITY", default_value_t = 0.5)]
    pub min_quality: f64,

    /// Estimated Jaccard similarity (of word 5-gram sets) from which two documents are
    /// near-duplicates; the better one is kept. An old draft with one sentence in ten rewritten
    /// scores about 0.7 against the final version; unrelated notes score under 0.1.
    #[arg(long, env = "ENGRAM_FILTER_NEAR_DUPLICATE", default_value_t = 0.6)]
    pub near_duplicate: f64,

    /// Print the dropped documents as JSON lines instead of a table.
    #[arg(long)]
    #[serde(skip)]
    pub json: bool,
}

/// Options of `train`.
#[derive(Debug, Clone, Args, serde::Serialize)]
pub struct TrainArgs {
    /// The dataset version to train on: a number (see `feature-pipeline datasets`) or `latest`.
    #[arg(long, env = "ENGRAM_TRAIN_DATASET", default_value = "latest")]
    pub dataset: String,

    /// The base model: a model version (`v3`, `3`, `production`), a GGUF file or an HF-layout
    /// directory. Default: the production model's own base (a fine-tuned production model is not
    /// trained on again), or the production model when it is a base.
    #[arg(long, env = "ENGRAM_TRAIN_BASE")]
    pub base: Option<String>,

    /// LoRA rank r.
    #[arg(long, env = "ENGRAM_TRAIN_RANK", default_value_t = 16)]
    pub rank: usize,

    /// LoRA alpha (updates are scaled by alpha / r).
    #[arg(long, env = "ENGRAM_TRAIN_ALPHA", default_value_t = 16.0)]
    pub alpha: f64,

    /// Dropout on the adapters' input while training.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,

    /// The projections that get adapters, comma-separated (q, k, v, o, gate, up, down).
    #[arg(long, value_delimiter = ',', default_value = "q,k,v,o,gate,up,down")]
    pub targets: Vec<String>,

    /// Peak learning rate (AdamW).
    #[arg(long, env = "ENGRAM_TRAIN_LEARNING_RATE", default_value_t = 2e-4)]
    pub learning_rate: f64,

    /// AdamW's weight decay.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,

    /// Share of the steps spent warming the learning rate up (then it decays linearly to 0).
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,

    /// Passes over the training split.
    #[arg(long, env = "ENGRAM_TRAIN_EPOCHS", default_value_t = 3)]
    pub epochs: usize,

    /// Examples per batch (packed into one forward pass).
    #[arg(long, env = "ENGRAM_TRAIN_BATCH_SIZE", default_value_t = 4)]
    pub batch_size: usize,

    /// Batches whose gradients make one optimizer step.
    #[arg(long, default_value_t = 1)]
    pub gradient_accumulation: usize,

    /// Longest example in tokens (prompt and answer); longer rows are left out and counted.
    #[arg(long, env = "ENGRAM_TRAIN_MAX_SEQ_LEN", default_value_t = 1024)]
    pub max_seq_len: usize,

    /// Share of each epoch's examples taken from the dataset's `qa` task (grounded answers): every
    /// summary once, and qa rows (repeated or sampled by seed) to make up this share; 0 trains on
    /// the summaries alone, 1 on the qa rows alone. Unset: every row of both, once per epoch.
    #[arg(long, env = "ENGRAM_TRAIN_QA_SHARE")]
    pub qa_share: Option<f64>,

    /// Seed of the adapters' initialisation and the batches' order.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,

    /// CPU threads (0: one per core).
    #[arg(long, env = "ENGRAM_TRAIN_THREADS", default_value_t = 0)]
    pub threads: usize,

    /// Save a checkpoint (adapter, optimizer state, step) every this many optimizer steps; a rerun
    /// of the same training resumes from the last one (0: never).
    #[arg(long, env = "ENGRAM_TRAIN_CHECKPOINT_EVERY", default_value_t = 10)]
    pub checkpoint_every: usize,

    /// Block type of the merged projections in the served GGUF: q8_0 keeps small updates, base
    /// reuses the base file's types (Q4_1 for SmolLM2: smaller, but small updates round away).
    #[arg(long, value_enum, default_value = "q8-0")]
    pub merged_blocks: crate::train::merge::MergedBlocks,

    /// Where to run: cpu, or cuda (needs a build with candle's cuda feature).
    #[arg(long, env = "ENGRAM_TRAIN_DEVICE", default_value = "cpu")]
    pub device: String,

    /// Also write the adapter, merged model and report into this new directory.
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Name of the registered model (default: `<base name>-lora`).
    #[arg(long)]
    pub name: Option<String>,

    /// Point `production` at the new version (unconditionally).
    #[arg(long)]
    pub promote: bool,

    /// Point `production` at the new version only when its test ROUGE-L beats the current
    /// production model's on the same test split.
    #[arg(long, env = "ENGRAM_TRAIN_PROMOTE_IF_BETTER")]
    pub promote_if_better: bool,

    /// Most tokens per answer when evaluating (default: the dataset's teacher limit).
    #[arg(long)]
    pub eval_max_tokens: Option<usize>,

    /// The embedding model (the evaluation's faithfulness).
    #[command(flatten)]
    #[serde(skip)]
    pub embedding: EmbeddingArgs,

    /// Train again even when the same training is recorded as done.
    #[arg(long)]
    pub no_cache: bool,
}

/// Options of `bench-train`.
#[derive(Debug, Clone, Args)]
pub struct BenchTrainArgs {
    /// The model (GGUF file or HF-layout directory).
    #[arg(long)]
    pub base: PathBuf,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// Tokens at the end of each sequence that carry the loss.
    #[arg(long, default_value_t = 128)]
    pub answer: usize,
    /// Timed optimizer steps (batch 1), after one warm-up step.
    #[arg(long, default_value_t = 8)]
    pub steps: usize,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}
