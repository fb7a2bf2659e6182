"""benchmarks/training.py's methods: the rows, the model (smoke, local folder or SmolLM2), and one trainer factory per
method with the same rewards, rows, seed and prompts per step; the hyperparameters each result records."""

from __future__ import annotations

from typing import Any

from _training_options import DSO_METHODS, Options


def load_rows(opts: Options):
    from dso_trl.tasks import load_task

    return load_task("pronoun", n_train=opts.n_train, n_train_unambiguous=opts.n_train_unambiguous,
                     n_test=opts.n_test, n_test_unambiguous=opts.n_test_unambiguous, prompt_format=opts.prompt_format)


def smoke_model_and_tokenizer(task, seed: int = 0):
    """A tiny random Llama and a word-level tokenizer trained on the task's words (dso_trl.testing: no download)."""
    from dso_trl.testing import tiny_llama, word_tokenizer

    texts = [(row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"])
             + " " + " ".join(row["option_completions"]) + " user assistant :"
             for split in task.values() for row in split]
    tokenizer = word_tokenizer(texts)
    return tiny_llama(len(tokenizer), seed=seed), tokenizer


def load_model(opts: Options, task):
    """(model, tokenizer, name) for the options: the smoke model, a local folder, or SmolLM2."""
    if opts.smoke:
        model, tokenizer = smoke_model_and_tokenizer(task)
        return model, tokenizer, "tiny random Llama (smoke)"
    from dso_trl.models import SMOLLM2_ID, load_model as load_local_or_smollm2

    model, tokenizer = load_local_or_smollm2(opts.model)  # fp32, eval mode
    return model, tokenizer, opts.model or SMOLLM2_ID


def build_trainer(method: str, model, tokenizer, train_dataset, opts: Options, callback, output_dir: str):
    """The trainer of `method`, with the same rewards, rows, seed and prompts per step as every other method."""
    from dso_trl.rewards import GenderParityReward, UnambiguousAccuracyReward

    rewards = [GenderParityReward(momentum=opts.parity_momentum), UnambiguousAccuracyReward()]
    common = dict(output_dir=output_dir, learning_rate=opts.learning_rates[method],
                  lr_scheduler_type=opts.lr_scheduler_type, warmup_steps=0, max_steps=opts.max_steps,
                  logging_steps=1, save_strategy="no", report_to=[], seed=opts.seed, bf16=False, fp16=False,
                  activation_checkpointing=False, dataloader_pin_memory=False, disable_tqdm=True)
    sampled = dict(per_device_train_batch_size=opts.micro_batch,
                   gradient_accumulation_steps=opts.batch_prompts * opts.num_generations // opts.micro_batch,
                   num_generations=opts.num_generations, max_completion_length=opts.max_completion_length,
                   scale_rewards=opts.scale_rewards, reward_weights=opts.sampled_reward_weights)
    if method in DSO_METHODS:
        from dso_trl import DSOConfig, DSOTrainer

        if method == "exact":
            args = DSOConfig(estimator="exact", per_device_train_batch_size=opts.batch_prompts, num_generations=2,
                             scale_rewards="none", text_kl_coef=opts.text_kl_coef,
                             steering_use_shift=opts.steering_use_shift[method],
                             exact_non_answers=opts.exact_non_answers, **common)
        else:
            args = DSOConfig(estimator="sampled", beta=opts.beta, text_kl_coef=opts.text_kl_coef,
                             steering_use_shift=opts.steering_use_shift[method], **sampled, **common)
        trainer = DSOTrainer(model, rewards, args=args, train_dataset=train_dataset, processing_class=tokenizer,
                             callbacks=[callback] if callback else None)
    else:
        from trl import GRPOConfig

        from dso_trl.scoring import prefills_as_text

        args = GRPOConfig(beta=opts.beta, **sampled, **common)
        train_dataset = prefills_as_text(train_dataset, tokenizer)  # TRL would close a prefilled answer
        if method == "lora_grpo":
            from peft import LoraConfig
            from trl import GRPOTrainer

            trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=args, train_dataset=train_dataset,
                                  processing_class=tokenizer, callbacks=[callback] if callback else None,
                                  peft_config=LoraConfig(r=opts.lora_r, task_type="CAUSAL_LM"))
        else:
            from dso_trl.baselines.ln_tuning import ln_tuning_trainer

            trainer = ln_tuning_trainer(model, rewards, args, train_dataset, tokenizer,
                                        callbacks=[callback] if callback else None)
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the callback prints one line per step instead of the log dicts
    return trainer


def hyperparameters(method: str, trainer, opts: Options) -> dict[str, Any]:
    args = trainer.args
    out = {"learning_rate": args.learning_rate, "lr_scheduler_type": str(args.lr_scheduler_type.value
                                                                         if hasattr(args.lr_scheduler_type, "value")
                                                                         else args.lr_scheduler_type),
           "prompts_per_step": opts.batch_prompts, "optimizer": str(getattr(args.optim, "value", args.optim)),
           "max_grad_norm": args.max_grad_norm, "scale_rewards": args.scale_rewards, "beta": args.beta,
           "parity_momentum": opts.parity_momentum, "reward_weights": [float(w) for w in trainer.reward_weights]}
    if method in DSO_METHODS:
        out.update(text_kl_coef=args.text_kl_coef, steering_use_shift=args.steering_use_shift)
    if method == "exact":
        out.update(estimator="exact", rows_per_step=opts.batch_prompts, non_answers=args.exact_non_answers)
    else:
        out.update(num_generations=args.num_generations, max_completion_length=args.max_completion_length,
                   completions_per_step=opts.batch_prompts * opts.num_generations,
                   micro_batch=args.per_device_train_batch_size,
                   gradient_accumulation_steps=args.gradient_accumulation_steps, temperature=args.temperature,
                   loss_type=args.loss_type)
    if method in ("lora_grpo", "ln_tuning_grpo"):
        config = trainer.model.peft_config["default"]
        targets = config.target_modules
        out["peft"] = {"type": type(config).__name__,
                       "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets}
        if method == "lora_grpo":
            out["peft"].update(r=config.r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout)
    return out
