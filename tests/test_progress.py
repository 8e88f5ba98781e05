"Progress bars follow `progress` / `TrainConfig.progress` (`--quiet`): the reference pass before DPO and KTO training too."
import pytest
from rlhf_nb.models import tiny_tokenizer, tiny_llama
from rlhf_nb.data import tokenize_preferences
from rlhf_nb.dpo_trainer import precompute_reference_logps, dpo, DPOConfig
from rlhf_nb.kto import kto, KTOConfig
from rlhf_nb.train import TrainConfig

ROWS = [{"prompt": f"Film {i} was", "chosen": " good and fun.", "rejected": " dull."} for i in range(8)]

@pytest.mark.parametrize("progress", [True, False])
def test_reference_pass_bar(capfd, progress):
    tok = tiny_tokenizer(); ds, _ = tokenize_preferences(ROWS, tok, max_length=32)
    precompute_reference_logps(tiny_llama(tok), ds, tok.pad_token_id, batch_size=4, progress=progress)
    assert ("reference log-probs" in capfd.readouterr().err) == progress

@pytest.mark.parametrize("train", ["dpo", "kto"])
def test_quiet_training_prints_no_bar(capfd, tmp_path, train):
    tok = tiny_tokenizer(); cfg = TrainConfig(output_dir=str(tmp_path), max_steps=1, batch_size=4, progress=False, save_final=False)
    if train == "dpo": dpo(tiny_llama(tok), tok, ROWS, cfg, DPOConfig(max_length=32, precompute_ref=True))
    else: kto(tiny_llama(tok), tok, ROWS, cfg, KTOConfig(max_length=32, precompute_ref=True))
    err = capfd.readouterr().err
    assert "reference log-probs" not in err and "it/s]" not in err, err[-500:]
