"""Query understanding of text search: who a query is for, which colours and product types it names, and
what it does not want, read before retrieval (:mod:`recommender.search` turns them into filters).

The dictionaries come from the catalog's own values (:func:`vocabulary_build`, cached per catalog
generation): every colour (``"Dark Blue"``, and its last word ``"blue"`` for the whole family: Blue,
Dark Blue, Light Blue), every product type (``"Leggings/Tights"`` answers to ``leggings`` and
``tights``, ``"Pyjama set"`` and ``"Pyjama bottom"`` to ``pyjama``), and the audience groups the
catalog holds, named by the words of :mod:`ml.audience`. A small table of shoppers' synonyms
(:data:`COLOUR_SYNONYMS`, :data:`TYPE_SYNONYMS`) points at those words and counts only where the
catalog has the target.

Negation: ``without X``, ``no X``, ``not X``, ``non-X`` and ``X-less`` words (``sleeveless``). A negated
colour or type excludes it; other negated words exclude products whose text says them
(``without sleeves``: none whose text mentions sleeves, unless it says ``sleeveless``).

Each understanding is a :class:`Chip` with a key (``audience``, ``colour``, ``type``, ``not:sleeves``)
that the shopper can switch off (``off=colour``), keeping the words as plain text.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace

from django.core.cache import cache
from django.db import connection
from django.db.models import Max

from catalog.models import Product
from ml.audience import UNISEX, audience_group
from recommender import answer_cache
from recommender.models import ProductEmbedding

#: Shoppers' colour words → the catalog colour words they mean (used only where the catalog has them).
COLOUR_SYNONYMS = {
    "navy": "dark blue",
    "burgundy": "dark red",
    "maroon": "dark red",
    "wine": "dark red",
    "bordeaux": "dark red",
    "cream": "off white",
    "ivory": "off white",
    "ecru": "off white",
    "khaki": "greenish khaki",
    "olive": "greenish khaki",
    "camel": "beige",
    "tan": "beige",
    "nude": "light beige",
    "brown": "yellowish brown",
    "charcoal": "dark grey",
    "gray": "grey",
    "lilac": "light purple",
    "lavender": "light purple",
    "violet": "purple",
    "mustard": "dark yellow",
    "teal": "dark turquoise",
    "mint": "light green",
    "golden": "gold",
}
#: Shoppers' garment words → the catalog type words they mean (the word itself stays searchable text).
TYPE_SYNONYMS = {
    "jeans": "trousers",
    "pants": "trousers",
    "chinos": "trousers",
    "joggers": "trousers",
    "jumper": "sweater",
    "jumpers": "sweater",
    "pullover": "sweater",
    "sweatshirt": "sweater",
    "tee": "t-shirt",
    "tees": "t-shirt",
    "tshirt": "t-shirt",
    "trainers": "sneakers",
    "pyjamas": "pyjama",
    "pajamas": "pyjama",
    "pajama": "pyjama",
    "tank": "vest top",
    "heels": "heeled sandals",
    "swim shorts": "swimwear bottom",
    "swimming trunks": "swimwear bottom",
    "trunks": "swimwear bottom",
}
#: Words that start a negation, and how many words it reaches at most.
NEGATIONS = ("without", "no", "not", "non")
NEGATION_REACH = 2
#: Words that end a negation's reach ("no print and long sleeves").
_BREAKS = {"and", "or", "but", "with", "in", "for", "&"}
#: "-less" words that are no negation.
_NOT_LESS = {"unless", "regardless", "less", "bless", "endless", "timeless", "careless"}
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*|&")
MAX_PHRASE = 3


def tokens(text: str) -> list[str]:
    """Lower-case words of a query (``t-shirt`` stays one word; ``men's`` gives ``men``, ``s``)."""
    return [t for t in _TOKEN.findall(text.lower().replace("’", "'")) if t != "s"]


@dataclass(frozen=True)
class Vocabulary:
    """Phrases (tuples of words) the catalog answers to: audience group, colour values, product types."""

    audience: dict[tuple[str, ...], str]
    colour: dict[tuple[str, ...], frozenset[str]]
    type: dict[tuple[str, ...], frozenset[str]]
    words: frozenset[str] = frozenset()  # every word of the catalog's titles, types, colours, texts
    common: tuple[str, ...] = ()  # the words of at least SPELLING_MIN_PRODUCTS products: corrections
    #: products per word, for the words of at least FREQUENT_MIN_PRODUCTS products (full-text search
    #: reads how many products a word would bring: ``recommender.search``)
    frequent: Mapping[str, int] = field(default_factory=dict)
    #: the slots of each product type's vector rows (``ProductEmbedding.slot``, every version kept): a type
    #: in one slot lets the vector ranking walk that slot's graph (``recommender.search``)
    type_slots: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def slot_of(self, types: Iterable[str]) -> str | None:
        """The one slot whose vector rows hold every product of ``types``; None when there are none,
        a type has no vector rows yet or the types span slots."""
        types = list(types)
        if not types or any(t not in self.type_slots for t in types):
            return None
        slots = frozenset().union(*(self.type_slots[t] for t in types))
        return next(iter(slots)) if len(slots) == 1 else None

    def products_with(self, word: str) -> int:
        """About how many products' texts have ``word`` (0 below :data:`FREQUENT_MIN_PRODUCTS`)."""
        return self.frequent.get(word, 0)

    def known(self, word: str) -> bool:
        """Is ``word`` one the catalog or the query grammar knows (a number counts as known)?"""
        return (
            word in self.words
            or word in NEGATIONS
            or word.isdigit()
            or (word,) in self.audience
            or (word,) in self.colour
            or (word,) in self.type
        )

    def correction(self, word: str) -> str | None:
        """The catalog word closest to a word it does not know (``jeens`` → ``jeans``), or None.

        First the audience, colour and type words, then the words of at least
        :data:`SPELLING_MIN_PRODUCTS` products (not the one-off model names of titles: "Jens"); in each,
        the best :func:`difflib.get_close_matches` at ratio ≥ :data:`SPELLING_CUTOFF` among the words
        of about its length and its first letter. Words shorter than 4 letters are never corrected.
        """
        if len(word) < 4 or self.known(word):
            return None
        shop = sorted(
            {w[0] for table in (self.audience, self.colour, self.type) for w in table if len(w) == 1}
        )
        for pool in (shop, self.common):
            near = [w for w in pool if abs(len(w) - len(word)) <= 2 and w[:1] == word[:1]]
            close = difflib.get_close_matches(word, near, n=1, cutoff=SPELLING_CUTOFF)
            if close:
                return close[0]
        return None

    def lookup(self, words: tuple[str, ...]) -> tuple[str, object] | None:
        """``("audience", group)``, ``("colour", values)``, ``("type", values)`` or None.

        A colour or type word the catalog holds as it is *and* through a synonym means both (one
        catalog's "navy" and another's "Dark Blue"; "Jeans" and "Trousers").
        """
        if words in self.audience:
            return "audience", self.audience[words]
        phrase = " ".join(words)
        for kind, table, synonyms in (
            ("colour", self.colour, COLOUR_SYNONYMS if len(words) == 1 else {}),
            ("type", self.type, TYPE_SYNONYMS),
        ):
            values = table.get(words, frozenset())
            if phrase in synonyms:
                values = values | table.get(tuple(synonyms[phrase].split()), frozenset())
            if values:
                return kind, values
        return None


#: The least :class:`difflib.SequenceMatcher` ratio of a spelling correction (``sweter`` → ``sweater``
#: 0.92, ``jaket`` → ``jacket`` 0.91, ``jeens`` → ``jeans`` 0.8).
SPELLING_CUTOFF = 0.8
#: A word of fewer products is never a correction (titles' model names: "Jens", "Dolores").
SPELLING_MIN_PRODUCTS = 5
#: The vocabulary keeps the product counts of the words of at least this many products.
FREQUENT_MIN_PRODUCTS = 200


def spelling_corrected(
    text: str, vocab: Vocabulary, in_catalog: Callable[[str], bool] | None = None
) -> tuple[str, dict[str, str]]:
    """``text`` with each word the catalog does not know replaced by its :meth:`Vocabulary.correction`,
    and ``{word: correction}``; the text unchanged and ``{}`` when nothing needs correcting.
    ``in_catalog(word)``, when given, is asked before a word is corrected: a word it finds (one the
    vocabulary's sample of a large catalog missed) is kept as typed.

    >>> v = vocabulary_from_values(colours=["Black"], types=["Jeans"], groups=["men"], word_counts={"slim": 9})
    >>> spelling_corrected("men sllim jeens", v)
    ('men slim jeans', {'sllim': 'slim', 'jeens': 'jeans'})
    """
    fixes = {
        w: c
        for w in dict.fromkeys(tokens(text))
        if (c := vocab.correction(w)) and not (in_catalog and in_catalog(w))
    }
    if not fixes:
        return text, {}
    out = text.lower()
    for word, fix in fixes.items():
        out = re.sub(rf"(?<![a-z0-9-]){re.escape(word)}(?![a-z0-9-])", fix, out)
    return out, fixes


#: A first word that this many several-word types share names them all, even when it is a type itself.
TYPE_FAMILY_MIN = 3
#: Words a shopper names a whole outfit slot with: each answers to every type of that slot
#: (:func:`vocabulary_build`), so "shoes" is sneakers, boots and sandals, not only a type called Shoes.
SLOT_WORDS: dict[str, tuple[str, ...]] = {
    "shoes": ("shoe", "shoes", "footwear"),
    "bag": ("bag", "bags"),
    "jewellery": ("jewellery", "jewelry"),
    "outerwear": ("outerwear",),
}


def _names_a_type(value: str) -> bool:
    """Is a product type value one a shopper names? Not empty, "Other …" or "Unknown"."""
    return bool(value) and not value.lower().startswith(("other", "unknown"))


def _plural_forms(word: str) -> set[str]:
    """The word and its plurals (never a singular made up: "shorts" must not answer to "short")."""
    return {word} if word.endswith("s") else {word, word + "s", word + "es"}


def vocabulary_from_values(
    *,
    colours: Iterable[str],
    types: Iterable[str],
    groups: Iterable[str],
    word_counts: Mapping[str, int] | None = None,
) -> Vocabulary:
    """The dictionaries of a catalog, from its distinct colour and product type values and audience groups.

    A colour value answers to its own words and its last word names the family (``blue``: every value
    ending in Blue); a type to its name, each ``/``-separated part, and their plurals; the first word of a
    several-word type (``pyjama``) to every type starting with it, unless it is a type itself that fewer
    than :data:`TYPE_FAMILY_MIN` types start with ("belt" is not "Belt bag"). Values such
    as "Other", "Unknown", "Other accessories" are no words a shopper uses and are left out.
    ``word_counts`` (``{word: number of products whose text has it}``) are the words spelling correction
    knows.
    """
    word_counts = word_counts or {}
    colour: dict[tuple[str, ...], set[str]] = defaultdict(set)
    for value in colours:
        words = tuple(tokens(value))
        if not words or words[0] in ("other", "unknown", "undefined") and len(words) == 1:
            continue
        colour[words].add(value)
        colour[(words[-1],)].add(value)  # the family: "blue" for Blue, Dark Blue, Light Blue
        if "-" in words[-1]:  # and "white" for MANGO's off-white, "black" for blue-black
            colour[(words[-1].rsplit("-", 1)[1],)].add(value)
    kinds: dict[tuple[str, ...], set[str]] = defaultdict(set)
    heads: dict[str, set[str]] = defaultdict(set)
    for value in types:
        if not _names_a_type(value):
            continue
        for part in [value, *value.split("/")] if "/" in value else [value]:
            words = tokens(part)
            if not words:
                continue
            for last in _plural_forms(words[-1]):
                kinds[(*words[:-1], last)].add(value)
            if len(words) > 1:
                for head in _plural_forms(words[0]):
                    heads[head].add(value)
    for head, values in heads.items():
        if (head,) not in kinds or len(values) >= TYPE_FAMILY_MIN:  # "pyjama": Pyjama and the ten Pyjama …
            kinds[(head,)] |= values
    present = set(groups)
    audience = {}
    words = _audience_words()
    phrases = [(w,) for w in words] + [(a, b) for a in ("baby", "kids", "young") for b in words[-6:-2]]
    for phrase in phrases:  # ("baby", "girl") is a baby's, as ml.audience reads it
        group = audience_group(" ".join(phrase))
        if group in present and group != UNISEX:
            audience[phrase] = group
    return Vocabulary(
        audience=audience,
        colour={k: frozenset(v) for k, v in colour.items()},
        type={k: frozenset(v) for k, v in kinds.items()},
        words=frozenset(word_counts),
        common=tuple(sorted(w for w, n in word_counts.items() if n >= SPELLING_MIN_PRODUCTS and len(w) > 3)),
        frequent={w: n for w, n in word_counts.items() if n >= FREQUENT_MIN_PRODUCTS},
    )


def _audience_words() -> list[str]:
    """Words a shopper names an audience with; :func:`ml.audience.audience_group` says whose they are."""
    base = ["women", "woman", "womens", "ladies", "lady", "men", "man", "mens", "gents", "male", "female"]
    return [*base, "kids", "kid", "children", "child", "boys", "boy", "girls", "girl", "baby", "babies"]


_LOCAL: dict[str, Vocabulary] = {}
#: Part of the cache key: bump it when :class:`Vocabulary` or how it is built changes, so no process
#: reads a vocabulary the old code cached.
VOCABULARY_FORMAT = 5
#: ``ts_stat`` over the products' texts parsed by the ``simple`` configuration (no stemming: the words as
#: written; ``t-shirt`` and its parts), with the number of products each is in.
_WORDS_SQL = (
    "SELECT word, ndoc FROM ts_stat($$SELECT to_tsvector('simple', title || ' ' || product_type || ' ' "
    "|| colour || ' ' || description) FROM catalog_product{sample}$$)"
)
#: Products whose words the vocabulary reads at most (a random sample of a larger catalog).
SPELLING_SAMPLE = 50_000


def _vocabulary_key() -> str:
    """The cache key of the current vocabulary: this database, its catalog generation and its newest
    product (an index lookup, not a count: a bulk load that bypasses the generation's signals still
    changes it).

    Raises:
        RedisError, OSError: the cache is down.
    """
    newest = Product.objects.aggregate(m=Max("id"))["m"] or 0
    name = connection.settings_dict["NAME"]
    return f"search:vocabulary:v{VOCABULARY_FORMAT}:{name}:g{answer_cache.generation()}:p{newest}"


def vocabulary_forget() -> None:
    """Drop the cached vocabulary (this process's and the shared cache's), so the next search rebuilds
    it: after a change of the vocabulary's own code, or a catalog change made behind the ORM."""
    _LOCAL.clear()
    with contextlib.suppress(*answer_cache.CACHE_ERRORS):
        cache.delete(_vocabulary_key())


def vocabulary_build() -> Vocabulary:
    """The catalog's :class:`Vocabulary` from its distinct values (four DISTINCT queries),
    cached per catalog generation (:mod:`recommender.answer_cache`) in the Django cache; a cache that
    is down means building it every time, never an error."""
    try:
        key = _vocabulary_key()
        hit = _LOCAL.get(key) or cache.get(key)
    except answer_cache.CACHE_ERRORS:
        key, hit = None, None
    if hit is not None:
        _LOCAL.clear()
        _LOCAL[key] = hit  # this process keeps the last one: no unpickling of the catalog's words per query
        return hit

    def distinct(name: str) -> list[str]:
        return list(Product.objects.exclude(**{name: ""}).values_list(name, flat=True).distinct())

    # every word of the products' texts with its product count; a large catalog's from a random sample
    # of about SPELLING_SAMPLE products (counts scaled back), so a build stays well under a second
    n = Product.objects.count()
    share = min(1.0, SPELLING_SAMPLE / max(n, 1))
    sample = "" if share >= 1.0 else f" TABLESAMPLE BERNOULLI ({100 * share:.6f}) REPEATABLE (0)"
    with connection.cursor() as cur:
        cur.execute(_WORDS_SQL.format(sample=sample))
        word_counts = {word: round(ndoc / share) for word, ndoc in cur.fetchall()}
    vocab = vocabulary_from_values(
        colours=distinct("colour"),
        types=distinct("product_type"),
        groups=distinct("audience_group"),
        word_counts=word_counts,
    )
    type_slots: dict[str, set[str]] = defaultdict(set)
    for ptype, slot in ProductEmbedding.objects.values_list("product__product_type", "slot").distinct():
        type_slots[ptype].add(slot)
    slot_types: dict[str, set[str]] = defaultdict(set)
    for ptype, slots in type_slots.items():
        if not _names_a_type(ptype):
            continue
        for slot in slots & SLOT_WORDS.keys():
            slot_types[slot].add(ptype)
    kinds = dict(vocab.type)
    for slot, said in SLOT_WORDS.items():
        for word in said if slot_types.get(slot) else ():
            kinds[(word,)] = frozenset(kinds.get((word,), frozenset()) | slot_types[slot])
    vocab = replace(vocab, type=kinds, type_slots={t: frozenset(s) for t, s in type_slots.items()})
    if key is not None:
        with contextlib.suppress(*answer_cache.CACHE_ERRORS):  # a cache that is down: built next time too
            cache.set(key, vocab, 600)
    return vocab


@dataclass(frozen=True)
class Chip:
    """One thing understood in a query, shown as a removable chip.

    ``key`` names it in the ``off`` parameter; ``kind`` is ``audience``, ``colour``, ``type``,
    ``not_colour``, ``not_type`` or ``not_words``; ``values`` the catalog values (or the words) it
    stands for; ``words`` the query words it was read from.
    """

    key: str
    kind: str
    label: str
    values: tuple[str, ...]
    words: str

    def as_dict(self) -> dict:
        return {"key": self.key, "kind": self.kind, "label": self.label, "values": list(self.values)}


@dataclass
class ParsedQuery:
    """A query read: its chips, the words left for full-text search (``terms``; negated words are not
    among them) and the text for the text tower (the query without its negations)."""

    text: str
    chips: list[Chip] = field(default_factory=list)
    terms: list[str] = field(default_factory=list)
    vector_text: str = ""

    def values(self, kind: str) -> set[str]:
        """The union of the values of this kind's chips."""
        return {v for c in self.chips if c.kind == kind for v in c.values}


_LABELS = {
    "audience": "for {}",
    "colour": "colour: {}",
    "type": "type: {}",
    "not_colour": "not {}",
    "not_type": "no {}",
    "not_words": "without {}",
}


def _chip(kind: str, values: Iterable[str], words: str) -> Chip:
    values = tuple(sorted(values))
    shown = values[0].lower() if kind in ("colour", "type") and len(values) == 1 else words
    key = kind if kind in ("audience", "colour", "type") else f"not:{words}"
    return Chip(key=key, kind=kind, label=_LABELS[kind].format(shown), values=values, words=words)


def _match(words: list[str], i: int, vocab: Vocabulary) -> tuple[int, tuple[str, object]] | None:
    """The longest known phrase starting at ``words[i]``: (its length, its lookup)."""
    for n in range(min(MAX_PHRASE, len(words) - i), 0, -1):
        hit = vocab.lookup(tuple(words[i : i + n]))
        if hit:
            return n, hit
    return None


def query_parse(text: str, *, vocab: Vocabulary, off: Iterable[str] = ()) -> ParsedQuery:
    """Read a shopper's query (see the module docstring).

    Args:
        text: the query as typed.
        vocab: the catalog's dictionaries (:func:`vocabulary_build`).
        off: chip keys switched off by the shopper: their words stay plain text.

    Returns:
        A :class:`ParsedQuery`; chips of the same kind merge (``black or white``: one colour chip).

    >>> v = vocabulary_from_values(colours=["Dark Blue", "Blue"], types=["Shirt", "Dress"], groups=["men"])
    >>> p = query_parse("men navy shirt without sleeves", vocab=v)
    >>> [c.label for c in p.chips], p.terms, p.vector_text
    (['for men', 'colour: dark blue', 'type: shirt', 'without sleeves'], ['navy', 'shirt'], 'men navy shirt')
    """
    off = set(off)
    words = tokens(text)
    found: dict[str, set[str]] = defaultdict(set)
    found_words: dict[str, list[str]] = defaultdict(list)
    negated: list[Chip] = []
    terms: list[str] = []
    kept: list[str] = []  # the text tower's words
    i = 0
    while i < len(words):
        w = words[i]
        neg_word = w.startswith("non-") and len(w) > 4
        if w in NEGATIONS or neg_word:
            rest = [w[4:], *words[i + 1 :]] if neg_word else words[i + 1 :]
            n, taken = _negation(rest, vocab, negated, off)
            if taken is not None:  # switched off by the shopper: plain words again
                terms.extend(taken)
                kept.extend([w, *taken] if not neg_word else taken)
            i += n + (0 if neg_word else 1)
            continue
        m = _match(words, i, vocab)
        if m:
            n, (kind, values) = m
            phrase = " ".join(words[i : i + n])
            if kind not in off:
                found[kind] |= {values} if isinstance(values, str) else set(values)
                found_words[kind].append(phrase)
            if kind != "audience" or kind in off:
                terms.extend(words[i : i + n])
            kept.extend(words[i : i + n])
            i += n
            continue
        stem = less_stem(w)  # "sleeveless": no sleeves, what its text would say
        if stem is not None:
            chip = _chip("not_words", [stem], stem)
            if chip.key not in off:
                negated.append(chip)
        if w not in _BREAKS:
            terms.append(w)
        kept.append(w)
        i += 1
    chips = [_chip(kind, found[kind], " ".join(found_words[kind])) for kind in ("audience", "colour", "type")]
    chips = [c for c in chips if c.values]
    seen = set()
    for c in negated:
        if c.key not in seen:
            seen.add(c.key)
            chips.append(c)
    return ParsedQuery(text=text, chips=chips, terms=terms, vector_text=" ".join(kept) or text.strip())


def less_stem(word: str) -> str | None:
    """What a "-less" word negates, as the query reads it (``sleeveless`` → ``sleeves``), or None when
    ``word`` is no such negation (``timeless``)."""
    return word[:-4] + "s" if word.endswith("less") and len(word) > 6 and word not in _NOT_LESS else None


def _negation(
    rest: list[str], vocab: Vocabulary, out: list[Chip], off: set[str]
) -> tuple[int, list[str] | None]:
    """Read what a negation word reaches in ``rest`` and append its chip. Returns how many words it took,
    and those words when the shopper switched the chip off (else None)."""
    m = _match(rest, 0, vocab) if rest else None
    if m and m[1][0] in ("colour", "type"):
        n, (kind, values) = m
        chip = _chip(f"not_{kind}", values, " ".join(rest[:n]))
    else:
        n = 0
        while n < min(NEGATION_REACH, len(rest)) and rest[n] not in _BREAKS and rest[n] not in NEGATIONS:
            if n and _match(rest, n, vocab):  # "without sleeves men": the audience word is not negated
                break
            n += 1
        if not n:
            return 0, None
        chip = _chip("not_words", [" ".join(rest[:n])], " ".join(rest[:n]))
    if chip.key in off:
        return n, rest[:n]
    out.append(chip)
    return n, None
