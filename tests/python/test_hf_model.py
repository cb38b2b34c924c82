"""A model in Hugging Face's layout, end to end: `models export-hf` writes the base GGUF as a
safetensors directory (what a fine-tuning run starts from and hands back), `models register DIR
--promote` stores it as a tree of artifacts, and the service downloads that tree and answers with it
through the official `openai` client."""

import json

import openai

from helpers import Service, clean_env, pipeline, ready

GGUF = "models/SmolLM2-135M-Instruct.Q4_1.gguf"


def test_an_hf_layout_model_is_registered_promoted_and_served(tmp_path):
    env = clean_env(tmp_path / "home")
    pipeline(env, "extract", "files", "samples/notes")
    pipeline(env, "filter")
    pipeline(env, "index")
    exported = tmp_path / "smollm2-hf"
    out = pipeline(env, "models", "export-hf", GGUF, str(exported))
    assert "HF layout" in out, out
    config = json.loads((exported / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["tie_word_embeddings"] is True
    assert "<|im_start|>" in json.loads((exported / "tokenizer_config.json").read_text())["chat_template"]

    out = pipeline(env, "models", "register", str(exported), "--name", "smollm2-hf", "--promote")
    assert "registered model version 1" in out, out
    assert "hf" in pipeline(env, "models", "list")

    server = Service(env)
    try:
        assert ready(server.base)["model"]["version"] == 1
        client = openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0, timeout=300)
        answer = client.chat.completions.create(
            model="engram",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=48,
            temperature=0,
            extra_body={"retrieval": {"enabled": False}},
        )
        assert answer.model == "smollm2-hf-v1", answer.model
        assert "Paris" in answer.choices[0].message.content, answer.choices[0].message.content
        assert answer.choices[0].finish_reason == "stop"
        # The served copy is the registered tree, unpacked in the service's model cache.
        cached = list((tmp_path / "home" / "cache" / "models").iterdir())
        assert [p.name.endswith(".hf") and p.is_dir() for p in cached] == [True], cached
    finally:
        assert server.stop() == 0
