"""The training benchmark's peer: Hugging Face transformers + peft on torch (CPU), on the same model
(the HF export of the shipped GGUF) and the same workload as `feature-pipeline bench-train`: batch 1,
sequences of seeded random tokens whose last `--answer` tokens carry the loss (the rest labelled
-100), LoRA r=16, alpha=16, dropout 0 on q, k, v, o, gate, up and down, AdamW lr 2e-4 weight decay
0.01. One warm-up step, then `--steps` timed steps. Prints one JSON line like engram's."""

import argparse
import json
import resource
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--answer", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(7)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, weight_decay=0.01)
    vocab = model.config.vocab_size
    seconds = []
    for step in range(args.steps + 1):
        ids = torch.randint(0, vocab, (1, args.seq_len))
        labels = ids.clone()
        labels[:, : args.seq_len - args.answer] = -100
        started = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - started)
    timed = seconds[1:]
    print(json.dumps({
        "bench": "train",
        "engine": f"transformers {__import__('transformers').__version__} + peft {__import__('peft').__version__} (torch {torch.__version__})",
        "threads": args.threads,
        "seq_len": args.seq_len,
        "answer_tokens": args.answer,
        "steps": len(timed),
        "tokens_per_s": args.seq_len * len(timed) / sum(timed),
        "seconds_per_step": sum(timed) / len(timed),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "last_loss": float(loss.detach()),
    }))


if __name__ == "__main__":
    main()
