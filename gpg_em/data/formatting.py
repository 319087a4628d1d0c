"""Entry -> chat messages -> prompt text / token length."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

DEFAULT_INSTRUCTION = "Put your final answer within \\boxed{}."


@dataclasses.dataclass(frozen=True)
class PromptFormatter:
    """Builds the chat for one entry.

    user message = question + separator + instruction (instruction "" or None
    to leave the question as is; reasoning-gym questions carry their own).
    """
    system_prompt: str | None = None
    instruction: str | None = DEFAULT_INSTRUCTION
    separator: str = "\n\n"

    def messages(self, entry: Mapping[str, Any]) -> list[dict[str, str]]:
        user = entry["question"].rstrip()
        if self.instruction:
            user = f"{user}{self.separator}{self.instruction}"
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": user}]

    def text(self, entry: Mapping[str, Any], tokenizer: Any = None) -> str:
        """Prompt text through the tokenizer's chat template, ending where the
        assistant's reply starts. Without a template (or tokenizer) the
        messages are joined plainly."""
        msgs = self.messages(entry)
        if tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return self.separator.join(m["content"] for m in msgs) + self.separator


def make_length_fn(tokenizer: Any, formatter: PromptFormatter) -> Callable[[Mapping[str, Any]], int]:
    """entry -> number of prompt tokens, for `PromptIterator(max_prompt_tokens=...)`."""
    def length(entry):
        # The chat template already wrote any BOS into the text.
        return len(tokenizer(formatter.text(entry, tokenizer), add_special_tokens=False)["input_ids"])
    return length
