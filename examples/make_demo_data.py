#!/usr/bin/env python3
"""Writes the bundled demo SFT dataset (examples/data/forge_sft.json, alpaca format) and trains the small
byte-level BPE tokenizer the demo model uses (examples/tokenizer/tokenizer.json) on the same text.
Everything here is original and deterministic (seeded). Run from the repository root:
    build/venv/bin/python examples/make_demo_data.py
"""
import json
import os
import random

random.seed(20261121)
rows = []
who = ["Who are you?", "What is your name?", "Introduce yourself.", "Tell me who you are.", "What are you?"]
for q in who:
    for _ in range(6):
        rows.append({"instruction": q, "input": "", "output": "I am Forge, a small assistant fine-tuned with loraforge."})
units = [("km", "m", 1000), ("m", "cm", 100), ("kg", "g", 1000), ("L", "mL", 1000), ("m", "mm", 1000), ("cm", "mm", 10)]
for a, b, f in units:
    for n in range(1, 41):
        rows.append({"instruction": f"Convert {n} {a} to {b}.", "input": "", "output": f"{n} {a} = {n * f} {b}."})
random.shuffle(rows)
os.makedirs("examples/data", exist_ok=True)
with open("examples/data/forge_sft.json", "w") as f:
    json.dump(rows, f, indent=1)
with open("examples/data/dataset_info.json", "w") as f:
    json.dump({"forge_sft": {"file_name": "forge_sft.json", "formatting": "alpaca",
                             "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}, f, indent=2)

from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers  # noqa: E402

tok = Tokenizer(models.BPE(unk_token=None))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
corpus = []
for r in rows:
    corpus.append(f"Below is an instruction that describes a task. Write a response that appropriately completes "
                  f"the request.\n\n### Instruction:\n{r['instruction']}\n\n### Response:\n{r['output']}")
trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
tok.train_from_iterator(corpus, trainer)
os.makedirs("examples/tokenizer", exist_ok=True)
tok.save("examples/tokenizer/tokenizer.json")
with open("examples/tokenizer/tokenizer_config.json", "w") as f:
    json.dump({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False, "add_eos_token": False,
               "model_max_length": 512, "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
print(f"{len(rows)} rows, vocab {tok.get_vocab_size()}")
