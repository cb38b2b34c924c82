"""Fine-tuning checked with the ecosystem's own readers, and served.

- engram's adapter, loaded by `peft` onto the base in transformers, gives the logits transformers
  gives for engram's merged model (the same weights two ways);
- an adapter `peft` made loads into engram (`models import-adapter`), and engram's merged model gives
  the logits of `peft`'s `merge_and_unload`;
- after `train --promote`, the service answers with the fine-tuned version through the
  official `openai` client.

The base is a small llama (2 layers of 64 features) with SmolLM2's tokenizer, so training takes
seconds; the 135M model trains in the quickstart and the benchmark."""

import json

import openai
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from helpers import Service, clean_env, pipeline, ready

GGUF = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 2, 198, 1, 4093, 198, 504, 3287]
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]


def tiny_base(tmp_path, env):
    """A random 2-layer llama saved by transformers, with SmolLM2's tokenizer and chat template."""
    exported = tmp_path / "smollm2-hf"
    pipeline(env, "models", "export-hf", GGUF, str(exported))
    big = json.loads((exported / "config.json").read_text())
    config = LlamaConfig(
        vocab_size=big["vocab_size"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        rms_norm_eps=big["rms_norm_eps"], rope_theta=big["rope_theta"], tie_word_embeddings=True,
        bos_token_id=big["bos_token_id"], eos_token_id=big["eos_token_id"],
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tiny = tmp_path / "tiny-hf"
    model.save_pretrained(tiny)
    for name in TOKENIZER_FILES:
        (tiny / name).write_bytes((exported / name).read_bytes())
    return tiny


def logits(model_dir_or_model, ids=PROMPT):
    model = model_dir_or_model
    if not isinstance(model, torch.nn.Module):
        model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A home with the sample notes, a dataset, the tiny base (v1, production) and a training run
    (v2) written out with --out."""
    tmp_path = tmp_path_factory.mktemp("train")
    env = clean_env(tmp_path / "home")
    pipeline(env, "extract", "files", "samples/notes")
    pipeline(env, "filter")
    pipeline(env, "index")
    pipeline(env, "dataset", "--teacher", "local", "--summaries", "2", "--max-tokens", "40",
             "--max-document-chars", "800", "--budget-chars", "600", "--validation", "0.2", "--test", "0.34",
             "--seed", "3", "--qa-chunks-per-document", "0")
    tiny = tiny_base(tmp_path, env)
    pipeline(env, "models", "register", str(tiny), "--name", "tiny", "--promote")
    out = tmp_path / "trained"
    stdout = pipeline(env, "train", "--base", "1", "--epochs", "20", "--batch-size", "2", "--learning-rate", "3e-2",
                      "--eval-max-tokens", "24", "--name", "tiny-lora", "--promote", "--out", str(out))
    return env, tiny, out, stdout


def test_peft_loads_engrams_adapter_onto_the_base_as_engrams_merged_model(trained):
    _, tiny, out, _ = trained
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16 and config["lora_alpha"] == 16
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, out / "adapter")
    through_peft = logits(adapted)
    merged = logits(out / "merged")
    untrained = logits(tiny)
    assert (through_peft - untrained).abs().max() > 1e-2, "the adapter changes nothing"
    assert (through_peft - merged).abs().max() < 1e-3, (through_peft - merged).abs().max()


def test_an_adapter_peft_trained_is_imported_and_merged_as_peft_merges_it(trained, tmp_path):
    env, tiny, _, _ = trained
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
                        init_lora_weights=False, lora_dropout=0.0)
    torch.manual_seed(1)
    model = get_peft_model(base, config)
    adapter = tmp_path / "peft-adapter"
    model.save_pretrained(adapter)
    want = logits(model.merge_and_unload())
    out = pipeline(env, "models", "import-adapter", str(adapter), "--base", "1", "--name", "from-peft")
    version = out.split("registered model version ")[1].split(" ")[0]
    exported = tmp_path / "exported"
    pipeline(env, "models", "export", version, str(exported))
    got = logits(exported / "hf")
    assert (got - logits(tiny)).abs().max() > 1e-2, "the imported adapter changes nothing"
    assert (got - want).abs().max() < 1e-3, (got - want).abs().max()


def test_the_service_answers_with_the_promoted_fine_tuned_model(trained):
    env, _, _, stdout = trained
    listed = json.loads(pipeline(env, "models", "list", "--json"))
    tuned = next(m for m in listed if m["name"] == "tiny-lora")
    assert tuned["lineage"]["base_model"] == 1 and tuned["lineage"]["dataset_version"] == 1
    for key in ("test_rouge_l", "base_test_rouge_l", "validation_loss", "base_validation_loss"):
        assert isinstance(tuned["metrics"][key], float), tuned["metrics"]
    assert "production" in tuned["aliases"], stdout
    server = Service(env)
    try:
        assert ready(server.base)["model"]["version"] == tuned["version"]
        client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0, timeout=300)
        assert [m.id for m in client.models.list().data] == [f"tiny-lora-v{tuned['version']}"]
        answer = client.chat.completions.create(
            model="engram", messages=[{"role": "user", "content": "Summarize my sourdough notes."}],
            max_tokens=8, temperature=0,
        )
        assert answer.model == f"tiny-lora-v{tuned['version']}", answer.model
        assert answer.usage.completion_tokens > 0
    finally:
        assert server.stop() == 0
