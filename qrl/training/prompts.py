"""What the model is asked and how its answers are drawn: the one prompt builder for training and evaluation, the
text a prompt becomes under the chat template, left truncation, and sampling answers in batches."""

from __future__ import annotations

from typing import Any

# The Python instruction names the function the tests call: without the name, 77 of 384 answers of the embedded
# model to easy problems defined a function under another name (a problem without an entry point, a stdin program,
# gets the plain instruction).
INSTRUCTIONS = {
    "python": "Answer with the complete Python function `{entry_point}` in one ```python code block.",
    "python-program": "Answer with the complete Python program in one ```python code block.",
    "q": "Answer with the q definition of `{entry_point}` in one ```q code block.",
}


def build_prompt(problem, tokenizer) -> str | list[dict[str, str]]:
    """The one prompt builder for training and evaluation: the chat template where the model has one, else the raw
    prompt. A completion-style problem (HumanEval: code that the answer continues) is shown to a chat model as code
    to complete: given the bare code, the embedded chat model wrote prose after it (0 of HumanEval's 164 greedy,
    against 9 asked this way); scoring joins whatever function it answers with to the prompt's code."""
    if not tokenizer.chat_template:
        return problem.prompt
    entry_point = getattr(problem, "entry_point", None)
    language = "python-program" if problem.language == "python" and not entry_point else problem.language
    entry_point = entry_point or "solve"  # Q-HumanEval names its own function
    instruction = INSTRUCTIONS.get(language, "").format(entry_point=entry_point)
    task = problem.prompt.rstrip()
    if problem.completion_joins_prompt:
        code = f"```{problem.language}\n{problem.prompt.strip()}\n```"
        task = f"Complete the {problem.language.capitalize()} function `{entry_point}`:\n\n{code}"
    return [{"role": "user", "content": f"{task}\n\n{instruction}".rstrip()}]


def prompt_text(prompt: str | list[dict[str, str]], tokenizer) -> str:
    """What the model actually reads for a prompt (the chat template applied)."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def truncate_prompt(prompt: str | list[dict[str, str]], tokenizer, max_tokens: int) -> tuple[Any, bool]:
    """Cut a prompt from the left to max_tokens (template included), keeping the instruction's end."""
    n_tokens = len(tokenizer(prompt_text(prompt, tokenizer), add_special_tokens=False)["input_ids"])
    if n_tokens <= max_tokens:
        return prompt, False
    content = prompt if isinstance(prompt, str) else prompt[-1]["content"]
    ids = tokenizer(content, add_special_tokens=False)["input_ids"]
    keep = max(len(ids) - (n_tokens - max_tokens), 1)
    cut = tokenizer.decode(ids[-keep:])
    if isinstance(prompt, str):
        return cut, True
    return [*prompt[:-1], {**prompt[-1], "content": cut}], True



def sample_completions(model, tokenizer, prompts: list, n: int, temperature: float, max_new_tokens: int,
                       batch_size: int = 8, desc: str | None = None) -> list[list[str]]:
    """n sampled answers per prompt (greedy and one answer when temperature is 0), decoded without specials.

    ``desc``: show a progress bar with this label (as transformers shows its own, and silenced the same way):
    sampling hundreds of answers on a CPU takes minutes."""
    import torch
    from transformers.utils import logging as hf_logging

    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    greedy = temperature <= 0
    n = 1 if greedy else n
    out: list[list[str]] = []
    bar = hf_logging.tqdm(total=len(prompts), desc=desc, unit="prompt", disable=desc is None or not
                          hf_logging.is_progress_bar_enabled())  # fmt: skip
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [prompt_text(p, tokenizer) for p in prompts[start:start + batch_size]]
            enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                gen = model.generate(
                    **enc, max_new_tokens=max_new_tokens, do_sample=not greedy,
                    temperature=temperature if not greedy else None, top_p=None, top_k=None,
                    num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                )
            answers = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
            out.extend(answers[i:i + n] for i in range(0, len(answers), n))
            bar.update(len(texts))
    finally:
        bar.close()
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return out


