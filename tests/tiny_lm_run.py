"""A tiny language-model training run through rlhf_nb.train, for the multi-process and kill tests.
Usage: python tiny_lm_run.py OUT_DIR BATCH_SIZE MAX_STEPS [SAVE_EVERY] [RESUME] [SLEEP_S] [EVAL]
with EVAL = "eval": 7 held-out rows evaluated every 5 steps in batches of 2 (an uneven split over two processes)."""
import sys, time
import torch
from rlhf_nb.core import sequence_logps
from rlhf_nb.models import tiny_tokenizer, tiny_llama
from rlhf_nb.train import TrainConfig, train

out, bs, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
save_every = int(sys.argv[4]) if len(sys.argv) > 4 else 0
resume = sys.argv[5] if len(sys.argv) > 5 and sys.argv[5] != "-" else None
sleep_s = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
with_eval = len(sys.argv) > 7 and sys.argv[7] == "eval"

tok = tiny_tokenizer()
texts = [f"The movie number {i} was {'good' if i % 2 else 'bad'} and the music was {'great' if i % 3 else 'slow'}." for i in range(40)]
rows = [{"input_ids": tok(t)["input_ids"] + [tok.eos_token_id]} for t in texts]

def collate(rows):
    T = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), T), tok.pad_token_id)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"]); mask[i, :len(r["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

def lm_batch(model, batch):
    if sleep_s: time.sleep(sleep_s)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return (-sequence_logps(logits, batch["labels"], average=True)).mean(), {}

cfg = TrainConfig(output_dir=out, max_steps=steps, batch_size=bs, lr=3e-3, warmup_steps=2, save_every=save_every,
                  resume_from=resume, progress=False, eval_every=5 if with_eval else 0, eval_batch_size=2)
held_out = [{"input_ids": tok(f"A held-out review {i} of a {'good' if i % 2 else 'slow'} movie.")["input_ids"]} for i in range(7)]
train(tiny_llama(tok), lm_batch, rows, collate, cfg, tokenizer=tok, eval_dataset=held_out if with_eval else None)
