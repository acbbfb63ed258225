"""What each edge site's users ask about, and the answers they expect: the simulated population's
domain, built from the standard library's documentation topics (``train/data.py``).

Every site owns a disjoint set of topics (the node's documents). Its users ask about some of them
(``asked``: the questions that reach the API and draw feedback); others are kept apart for
evaluation only (``held_out``: questions on topics the node never trains on, so a better score
means the model got better at the site's domain, not that it memorised answers). A reference
answer is the opening of the topic's documentation: what the site's users take as right.

Example:
    >>> d = site_domains(["edge-1", "edge-2"], seed=0)
    >>> d["edge-1"].asked[0].question.endswith("?") and not set(d["edge-1"].topics) & set(d["edge-2"].topics)
    True
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgefleet.config import EdgefleetConfig
from edgefleet.platform.chat import ChatExample
from edgefleet.train.data import demo_topics, split_topics

ASK_TEMPLATES = (
    "Can you explain {subject} in Python?",
    "In Python, what should I know about {subject}?",
    "What does the Python documentation say about {subject}?",
    "Briefly, what is {subject} in Python?",
)
DOC_TEMPLATES = (
    "What does the Python reference say about {subject}?",
    "Tell me more about {subject} in Python?",
    "What is a detail of {subject} in Python?",
)
REFERENCE_CHARS = 240  # a reference answer: the documentation's opening, cut at a sentence
DOC_ANSWER_CHARS = 240
HELD_OUT_SHARE = 0.3  # of each site's topics, kept for evaluation


# Everyday questions with plain answers, mixed into every node's documents: rehearsal, so that
# learning a site's domain does not unlearn general chat (the base model's own style of answer).
# None of them is a question the regression guard asks (eval/scores.py).
GENERAL_EXAMPLES = tuple(
    ChatExample(q, a)
    for q, a in (
        ("What is the capital of Italy?", "The capital of Italy is Rome."),
        ("What is the capital of Germany?", "The capital of Germany is Berlin."),
        ("What is the capital of Spain?", "The capital of Spain is Madrid."),
        ("What is the capital of the United Kingdom?", "The capital of the United Kingdom is London."),
        ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
        ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
        ("What is the capital of Australia?", "The capital of Australia is Canberra."),
        ("What is the capital of Brazil?", "The capital of Brazil is Brasília."),
        ("What is the capital of China?", "The capital of China is Beijing."),
        ("What is the capital of India?", "The capital of India is New Delhi."),
        ("What is the largest ocean on Earth?", "The largest ocean on Earth is the Pacific Ocean."),
        ("How many hours are there in a day?", "There are 24 hours in a day."),
        ("How many months are there in a year?", "There are 12 months in a year."),
        ("What is the opposite of up?", "The opposite of up is down."),
        ("What is the opposite of big?", "The opposite of big is small."),
        ("What color is grass?", "Grass is green."),
        ("What do bees make?", "Bees make honey."),
        ("What is water made of?", "Water is made of hydrogen and oxygen: two hydrogen atoms and one oxygen atom."),
        ("Which planet do we live on?", "We live on Earth, the third planet from the Sun."),
        ("What is 3 plus 5?", "3 plus 5 is 8."),
        ("What is 10 minus 4?", "10 minus 4 is 6."),
        ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
        ("What language is spoken in Brazil?", "The official language of Brazil is Portuguese."),
        ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
        (
            "How do I make a cup of tea?",
            "Boil water, pour it over a tea bag in a cup, wait three to five minutes, then remove the bag.",
        ),
        (
            "Give me a tip for sleeping better.",
            "Go to bed at the same time every night and keep screens out of the bedroom.",
        ),
        ("Write one sentence about the moon.", "The moon lights up the night sky as it circles the Earth."),
        ("Say thank you to my colleague Tom.", "Thank you, Tom, for your help!"),
        (
            "What is a good way to learn a new language?",
            "Practise a little every day, and speak with native speakers as often as you can.",
        ),
        ("Explain what a cloud is.", "A cloud is a mass of tiny water droplets or ice crystals floating in the air."),
    )
)


@dataclass(frozen=True)
class QA:
    topic: str
    question: str
    reference: str


@dataclass(frozen=True)
class SiteDomain:
    node_id: str
    topics: tuple[str, ...]  # the node's documents (asked topics among them), held-out ones excluded
    asked: tuple[QA, ...]  # what its users ask through the API
    held_out: tuple[QA, ...]  # evaluation only: never in the node's documents or its users' traffic


def site_domains(node_ids: Sequence[str], *, seed: int = 0) -> dict[str, SiteDomain]:
    """Each node's domain: its share of the documentation topics, split into trained and held out."""
    texts = demo_topics()
    split = split_topics(node_ids, topics=list(texts), seed=seed)
    out = {}
    for node in node_ids:
        usable = [t for t in split.shards[node] if _prose(texts[t])[1]]
        rng = random.Random(f"{seed}:{node}")
        rng.shuffle(usable)
        n_held = max(1, round(HELD_OUT_SHARE * len(usable)))
        held, own = sorted(usable[:n_held]), sorted(usable[n_held:])
        out[node] = SiteDomain(
            node_id=node,
            topics=tuple(own),
            asked=tuple(question_for(t, texts[t], rng) for t in own),
            held_out=tuple(question_for(t, texts[t], rng) for t in held),
        )
    return out


def question_for(topic: str, text: str, rng: random.Random) -> QA:
    subject, paragraphs = _prose(text)
    question = rng.choice(ASK_TEMPLATES).format(subject=subject)
    return QA(topic, question, _cut(paragraphs[0], REFERENCE_CHARS))


def document_examples(texts: Sequence[str], *, seed: int = 0) -> list[ChatExample]:
    """A node's documents as question/answer pairs: each prose paragraph answers a question about
    its topic's subject. What a site's users ask about is in its documents, in the documents' words."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        subject, paragraphs = _prose(text)
        for i, para in enumerate(paragraphs):
            template = ASK_TEMPLATES if i == 0 else DOC_TEMPLATES
            out.append(ChatExample(rng.choice(template).format(subject=subject), _cut(para, DOC_ANSWER_CHARS)))
    return out


_RULE = re.compile(r"[*=\-^~\"]+")
_NOTES = ("New in", "Changed in", "See also", "Note:", "Deprecated")


def _prose(text: str) -> tuple[str, list[str]]:
    """(subject, prose paragraphs) of a documentation topic: its title, and the paragraphs that are
    sentences (grammar, code and headings left out)."""
    lines = text.splitlines()
    title = lines[0].strip() if lines else ""
    paragraphs, current = [], []
    for line in lines[1:]:
        if not line.strip() or line.startswith(" ") or _RULE.fullmatch(line.strip()):
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(line.strip())
    if current:
        paragraphs.append(" ".join(current))
    # A paragraph that leads into a grammar rule or an example ends with ":"; as an answer it ends there.
    prose = [p.removesuffix(":") + "." if p.endswith(":") else p for p in paragraphs]
    return _subject(title), [p for p in prose if len(p) > 60 and not p.startswith(_NOTES)]


def _subject(title: str) -> str:
    """'The "assert" statement' → 'the "assert" statement'; 'Coroutines' → 'coroutines'."""
    if not title:
        return "this topic"
    first, _, rest = title.partition(" ")
    keep = first.isupper() and len(first) > 1 or first.startswith('"')  # acronyms and quoted names
    return f"{first if keep else first.lower()} {rest}".strip()


def _cut(paragraph: str, limit: int) -> str:
    """The paragraph's opening sentences, within ``limit`` characters (at least its first sentence)."""
    sentences = re.split(r"(?<=[.!?])\s+", paragraph)
    out = sentences[0]
    for s in sentences[1:]:
        if len(out) + 1 + len(s) > limit:
            break
        out += " " + s
    return out[: limit * 2]


def eval_dir(cache_dir: Path) -> Path:
    """The sites' held-out questions (``<node>.chat.jsonl``): public evaluation sets, no user data."""
    return Path(cache_dir) / "data" / "eval"


def held_out_by_site(cfg: EdgefleetConfig) -> dict[str, list[ChatExample]]:
    """Each edge node's held-out questions with their reference answers (``<node>.chat.jsonl`` in
    :func:`eval_dir`, as :func:`write_site_data` or an operator left them); nodes without one, and
    files of nodes no longer in the fleet, are left out."""
    from edgefleet.train.data import read_chat_examples

    folder = eval_dir(cfg.cache_dir)
    files = {n.id: folder / f"{n.id}.chat.jsonl" for n in cfg.fleet.edge_nodes}
    return {node: read_chat_examples(path, feedback=False) for node, path in files.items() if path.is_file()}


def probe_chats(cfg: EdgefleetConfig, n: int = 12) -> list[ChatExample]:
    """A canary rollout's quality probe: up to ``n`` held-out questions with their reference
    answers, taken from every site in turn."""
    per_site = list(held_out_by_site(cfg).values())
    turns = [site[i] for i in range(max(map(len, per_site), default=0)) for site in per_site if i < len(site)]
    return turns[:n]


def write_site_data(cfg: EdgefleetConfig, *, seed: int = 0) -> dict[str, SiteDomain]:
    """Each node's documents as chat examples in its data directory (in place of the plain-text
    shard ``edgefleet train data`` writes), and each site's held-out questions in :func:`eval_dir`.
    A node with a configured ``data_dir`` keeps its own data."""
    from edgefleet.train.data import SHARD_FILE, node_data_dir, write_chat_examples

    texts = demo_topics()
    domains = site_domains([n.id for n in cfg.fleet.edge_nodes], seed=seed)
    for node in cfg.fleet.edge_nodes:
        domain = domains[node.id]
        write_chat_examples(
            eval_dir(cfg.cache_dir) / f"{node.id}.chat.jsonl",
            [ChatExample(q.question, q.reference) for q in domain.held_out],
        )
        if node.data_dir is not None:
            continue
        folder = node_data_dir(cfg, node)
        write_chat_examples(folder / "documents.chat.jsonl", document_examples([texts[t] for t in domain.topics]))
        write_chat_examples(folder / "general.chat.jsonl", GENERAL_EXAMPLES)
        (folder / SHARD_FILE).unlink(missing_ok=True)
    return domains
