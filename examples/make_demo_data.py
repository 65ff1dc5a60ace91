#!/usr/bin/env python3
"""Writes the bundled demo SFT dataset (examples/data/forge_sft.json, alpaca format) and trains the small
byte-level BPE tokenizer the demo model uses (examples/tokenizer/tokenizer.json) on the same text.
The dataset: an assistant identity (30 rows) and unit-conversion facts (24 unit pairs x 9 paraphrased
questions): every answer is fixed per pair and names its number itself, so a tiny random model can learn the
whole set (no digits to copy from the prompt). Everything here is original and deterministic (seeded).
Run from the repository root:
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
# (larger unit, how many of the smaller unit make one larger, smaller unit plural); every larger unit appears
# once, so that one word of the question decides the answer
facts = [
    ("kilometer", 1000, "meters"), ("meter", 100, "centimeters"), ("centimeter", 10, "millimeters"),
    ("kilogram", 1000, "grams"), ("gram", 1000, "milligrams"), ("tonne", 1000, "kilograms"),
    ("liter", 1000, "milliliters"), ("mile", 1760, "yards"), ("yard", 3, "feet"), ("foot", 12, "inches"),
    ("pound", 16, "ounces"), ("gallon", 4, "quarts"), ("quart", 2, "pints"), ("pint", 2, "cups"),
    ("minute", 60, "seconds"), ("hour", 60, "minutes"), ("day", 24, "hours"), ("week", 7, "days"),
    ("fortnight", 14, "days"), ("year", 12, "months"), ("decade", 10, "years"), ("century", 100, "years"),
    ("byte", 8, "bits"), ("kilobyte", 1024, "bytes"),
]
# every question ends with the larger unit, so the word that decides the answer sits just before the response
asks = ["How many {b} are in a {u}?", "How many {b} are there in one {u}?", "How many {b} make a {u}?",
        "How many {b} make up one {u}?", "How many {b} fit in a {u}?", "What number of {b} is in one {u}?",
        "How many {b} equal one {u}?", "In {b}, how much is a {u}?", "Converted to {b}, what is one {u}?"]
for u, n, b in facts:
    for t in asks:
        q = t.format(b=b, u=u).replace(" a hour", " an hour")
        rows.append({"instruction": q, "input": "", "output": f"One {u} is {n} {b}."})
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
