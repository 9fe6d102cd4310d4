"""The trials demo's agent: look up the policy a question is about, then let a model answer
from it. The model is langchain_core's fake chat model, whose reply is drawn with the trial's
seed (wtb_conf.trial()): answers vary from trial to trial like an LLM's, with no network and
no key, and a rerun of a trial draws the same. `skill` is how often the prompt makes the
model state the policy's figure; the variants (conf/variant/agent_*.yaml) change the prompt.
"""

from __future__ import annotations

import random
from pathlib import Path

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

import wtb_conf

POLICIES = {
    "returns": ("Orders can be returned within 30 days of delivery.", "30 days"),
    "shipping": ("Standard shipping takes 5 business days.", "5 business days"),
    "warranty": ("Electronics carry a 2 year warranty.", "2 year"),
    "cancel": ("Orders can be cancelled until they ship, within 24 hours.", "24 hours"),
    "exchange": ("Gifts can be exchanged without a receipt for store credit.", "store credit"),
}
KEYWORDS = {"return": "returns", "shipping": "shipping", "warranty": "warranty",
            "cancel": "cancel", "exchange": "exchange"}
WRONG = ["14 days", "10 business days", "1 year", "48 hours", "a refund", "60 days"]
PROMPTS = {
    "terse": "Answer in one short sentence.",
    "friendly": "Answer warmly, in one or two sentences.",
    "cite": "Name the policy you answer from, then answer.",
}


def lookup(state: dict) -> dict:
    """The policy the question is about (a keyword match: deterministic)."""
    question = state["question"].lower()
    topic = next((t for word, t in KEYWORDS.items() if word in question), "returns")
    text = POLICIES[topic][0]
    Path("policy.md").write_text(f"# {topic}\n\n{text}\n")
    return {"topic": topic, "policy": text}


def answer(state: dict, prompt: str = "terse", skill: float = 0.6) -> dict:
    """The model's answer. Its reply is drawn from the trial's seed and the prompt, so two
    prompts of equal skill draw independently, and the same trial draws the same again."""
    if prompt not in PROMPTS:
        raise ValueError(f"prompt {prompt!r}: valid are {', '.join(PROMPTS)}")
    rng = random.Random(f"{wtb_conf.trial().seed}:{prompt}")
    fact = POLICIES[state["topic"]][1]
    said = fact if rng.random() < skill else rng.choice([w for w in WRONG if w != fact])
    reply = {"terse": f"{said}.",
             "friendly": f"Happy to help! That's {said}.",
             "cite": f"Per our {state['topic']} policy: {said}."}[prompt]
    words = len(reply.split())
    model = GenericFakeChatModel(messages=iter([AIMessage(
        reply, usage_metadata={"input_tokens": 40, "output_tokens": words,
                               "total_tokens": 40 + words})]))
    message = model.invoke([SystemMessage(PROMPTS[prompt]),
                            HumanMessage(f"{state['question']}\n\nPolicy: {state['policy']}")])
    Path("answer.md").write_text(message.content + "\n")
    return {"answer": message.content, "words": words}


def correct(state: dict, expected: dict) -> bool:
    """The answer states the policy's figure."""
    return expected["fact"] in state.get("answer", "")
