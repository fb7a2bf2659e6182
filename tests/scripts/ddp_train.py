"""Run by tests/test_distributed.py under `accelerate launch`: a few DSOTrainer steps (with the text-KL term, whose
second forward pass per step must not upset DDP), then each rank saves its steering."""

import sys
from pathlib import Path

from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import SPECIAL_TOKENS, make_model, train_tokenizer  # noqa: E402
from test_trainer import make_args, pronoun_rows, rewards  # noqa: E402

from dso_trl import DSOTrainer  # noqa: E402

out = Path(sys.argv[1])
trainer = DSOTrainer(make_model("llama"), rewards(), args=make_args(out, max_steps=3, use_cpu=True,
                                                                   ddp_find_unused_parameters=False, text_kl_coef=1.0),
                     train_dataset=pronoun_rows(), processing_class=train_tokenizer(SPECIAL_TOKENS))
trainer.train()
rank = trainer.accelerator.process_index
state = {name: param.detach().clone() for name, param in trainer.steering.named_parameters()}
save_file(state, str(out / f"steering_rank{rank}.safetensors"))
text_kl = [entry["dso/text_kl"] for entry in trainer.state.log_history if "dso/text_kl" in entry]
print(f"rank {rank} of {trainer.accelerator.num_processes}: nonzero {trainer.steering.nonzero()}, "
      f"text KL logged {len(text_kl)} times")
