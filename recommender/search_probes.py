"""What a product's photo says that its text does not: linear probes on the image vectors for the words a
shopper negates ("men shirt without sleeves").

A negated word excludes the products whose text says it (:mod:`recommender.search`). A product whose
text is silent passed until now, though its photo may show what the shopper does not want: an Oxford
shirt whose description never mentions its long sleeves. Where the catalog's own texts name the word
both ways, said (``sleeves``) and its "-less" opposite (``sleeveless``), in enough products, a logistic
regression on the active version's image vectors (``ProductEmbedding.image``, the photo in the shared
image–text space) learns to tell the two apart, and a silent product whose photo the probe reads as the
said side (probability above :data:`PROBE_EXCLUDE_P`) is excluded too. The labels are the catalog's own
texts: no hand-made list of attributes, no extra model.

A probe is used only when its cross-validated balanced accuracy (5 folds) reaches
:data:`PROBE_MIN_ACCURACY`; otherwise the negation stays text-only, as before. Probes are cached per
model version and word (``PROBE_CACHE_SECONDS``). A training run fits them when it activates its version
(:func:`probes_warm`); otherwise the first negated query of a word fits it (about 2–3 s on the demo
catalog). A new product is judged by the cached probe in the SQL condition itself, so the cache needs no
invalidation on catalog changes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from django.contrib.postgres.search import SearchQuery
from django.core.cache import cache
from django.db import connection
from django.db.models import Exists, OuterRef, Q, Value
from django.db.models.lookups import LessThan
from pgvector.django import MaxInnerProduct

from catalog.models import SEARCH_CONFIG
from recommender.answer_cache import CACHE_ERRORS
from recommender.models import ModelVersion, ProductEmbedding
from recommender.search_query import less_stem, vocabulary_build

logger = logging.getLogger(__name__)

#: Products each side must have (said, and its "-less" word) before a probe is fitted.
PROBE_MIN_PRODUCTS = 30
#: Products read per side at most (the first by id): enough for a linear probe, quick to read.
PROBE_MAX_PER_SIDE = 2000
#: Cross-validated balanced accuracy a probe needs to be used.
PROBE_MIN_ACCURACY = 0.85
#: A silent product is excluded when the probe gives the said side more than this probability (the
#: classes weighted to equal priors).
PROBE_EXCLUDE_P = 0.5
#: How long a fitted probe is kept (a version's vectors of the labelled products do not change), and how
#: long "no usable probe" is (the catalog may gain the labelled products it lacked).
PROBE_CACHE_SECONDS = 30 * 24 * 3600
NO_PROBE_CACHE_SECONDS = 3600
#: How long one process may hold the right to fit a probe (a fit takes seconds; a crashed holder's
#: right lapses after this).
PROBE_FIT_LOCK_SECONDS = 120
_CACHE_PREFIX = "search:probe:v2"


@dataclass(frozen=True, eq=False)
class Probe:
    """A linear probe on image vectors: ``x · weights + bias > 0`` reads as "shows ``word``".

    Attributes:
        word: the negated word (``sleeves``); ``opposite`` its "-less" word (``sleeveless``).
        weights: (D,) float32, in the image vectors' space; ``bias`` float.
        accuracy: cross-validated balanced accuracy on the labelled products (0..1).
        n_said, n_opposite: labelled products per side it was fitted on.
    """

    word: str
    opposite: str
    weights: np.ndarray
    bias: float
    accuracy: float
    n_said: int
    n_opposite: int

    @property
    def usable(self) -> bool:
        return self.accuracy >= PROBE_MIN_ACCURACY


def probe_fit(said: np.ndarray, opposite: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, float, float]:
    """Fit a class-balanced logistic regression telling ``said`` from ``opposite`` vectors.

    Args:
        said: (N, D) float32 vectors of products whose text says the word.
        opposite: (M, D) float32 vectors of products whose text says its opposite.
        seed: the folds' shuffle.

    Returns:
        ``(weights (D,) float32, bias, balanced accuracy)``; the accuracy is 5-fold cross-validated
        (scikit-learn's ``cross_val_score``), the weights fitted on all rows, then shifted so that
        ``x · weights + bias > 0`` means probability above :data:`PROBE_EXCLUDE_P`.

    Raises:
        ValueError: a side with fewer than 5 rows (too few to cross-validate), or not 2-D with the same D.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    said, opposite = np.asarray(said, np.float32), np.asarray(opposite, np.float32)
    if said.ndim != 2 or opposite.ndim != 2:
        raise ValueError(f"vectors must be (N, D) arrays (got shapes {said.shape} and {opposite.shape})")
    if min(len(said), len(opposite)) < 5:
        raise ValueError(f"a probe needs 5 or more products per side (got {len(said)} and {len(opposite)})")
    if said.shape[1] != opposite.shape[1]:
        raise ValueError(f"vector sizes differ: {said.shape[1]} and {opposite.shape[1]}")
    x = np.concatenate([said, opposite])
    y = np.concatenate([np.ones(len(said), int), np.zeros(len(opposite), int)])
    model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000, tol=1e-6)  # converged, not near
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    accuracy = float(cross_val_score(model, x, y, cv=folds, scoring="balanced_accuracy").mean())
    model.fit(x, y)
    logit = float(np.log(PROBE_EXCLUDE_P / (1.0 - PROBE_EXCLUDE_P)))
    return model.coef_[0].astype(np.float32), float(model.intercept_[0]) - logit, accuracy


def says(words: str) -> SearchQuery:
    """The full-text query "the product's text says ``words``" (a phrase in ``SEARCH_CONFIG``)."""
    return SearchQuery(words, search_type="phrase", config=SEARCH_CONFIG)


def _vectors(version: ModelVersion, q: Q) -> np.ndarray:
    rows = (
        ProductEmbedding.objects.filter(model_version=version)
        .filter(q)
        .order_by("product_id")
        .values_list("image", flat=True)[:PROBE_MAX_PER_SIDE]
    )
    return np.array([np.asarray(v, np.float32) for v in rows], np.float32)


def probe_build(version: ModelVersion, word: str, opposite: str) -> Probe | None:
    """Fit the probe of ``word`` against ``opposite`` on ``version``'s image vectors of the products
    whose texts say one and not the other. None when a side has fewer than :data:`PROBE_MIN_PRODUCTS`.
    """
    said_q, opp_q = says(word), says(opposite)
    said = _vectors(version, Q(product__search_vector=said_q) & ~Q(product__search_vector=opp_q))
    opp = _vectors(version, Q(product__search_vector=opp_q))
    if min(len(said), len(opp)) < PROBE_MIN_PRODUCTS:
        return None
    weights, bias, accuracy = probe_fit(said, opp)
    return Probe(word, opposite, weights, bias, accuracy, len(said), len(opp))


def _key(version: ModelVersion, word: str, opposite: str) -> str:
    # a rebuilt database reuses version ids: the database and the version's creation time name it
    created = int(version.created_at.timestamp() * 1e6) if version.created_at else 0
    return f"{_CACHE_PREFIX}:{connection.settings_dict['NAME']}:{version.pk}.{created}:{word}:{opposite}"


def probe_for(version: ModelVersion, word: str, opposite: str) -> Probe | None:
    """The usable probe of ``word`` for ``version`` (cached), or None: too few labelled products, below
    :data:`PROBE_MIN_ACCURACY`, or being fitted by another process right now (the negation then stays
    text-only; one process fits a probe at a time, holding a cache lock for at most
    :data:`PROBE_FIT_LOCK_SECONDS`)."""
    key = _key(version, word, opposite)
    try:
        cached = cache.get(key)
        locked = cached is None and not cache.add(f"{key}:fitting", 1, PROBE_FIT_LOCK_SECONDS)
    except CACHE_ERRORS as exc:
        logger.warning("probe cache unavailable (%s)", exc)
        cached, locked = None, False
    if locked:
        return None  # another process is fitting it: this query goes without
    if cached is not None:
        probe = cached or None  # False: known to have no probe
        usable = probe is not None and probe.usable
    else:
        try:
            probe = probe_build(version, word, opposite)
        finally:
            with contextlib.suppress(*CACHE_ERRORS):
                cache.delete(f"{key}:fitting")
        if probe is not None:
            logger.info(
                "probe %r vs %r on version %s: balanced accuracy %.3f (%d / %d products)%s",
                word, opposite, version.pk, probe.accuracy, probe.n_said, probe.n_opposite,
                "" if probe.usable else ", not used",
            )  # fmt: skip
        usable = probe is not None and probe.usable
        with contextlib.suppress(*CACHE_ERRORS):
            cache.set(key, probe or False, PROBE_CACHE_SECONDS if usable else NO_PROBE_CACHE_SECONDS)
    return probe if usable else None


def less_word(words: str) -> str:
    """The "-less" word of a negated word: ``sleeves`` → ``sleeveless``, ``print`` → ``printless``."""
    base = words[:-1] if words.endswith("s") and " " not in words else words
    return f"{base}less"


@dataclass(frozen=True, eq=False)
class Probes:
    """The usable probes of a query's negated words, ``{word: Probe}``, as conditions of the search."""

    probes: dict[str, Probe]

    def _shows(self, probe: Probe):
        # x · w + b > 0  ⟺  (image <#> w) < b   (pgvector's <#> is the negative inner product)
        return LessThan(MaxInnerProduct("image", probe.weights.tolist()), Value(probe.bias))

    def vector_rows_q(self) -> Q:
        """On ``ProductEmbedding`` rows: for every probe, the text says its "-less" word or the photo
        does not show the word (the row's own ``image``: one inner product per row, no join)."""
        q = Q()
        for probe in self.probes.values():
            q &= Q(product__search_vector=says(probe.opposite)) | ~Q(self._shows(probe))
        return q

    def products_q(self, version: ModelVersion) -> Q:
        """The same on ``Product`` rows: for every probe, the text says its "-less" word or the photo
        of the product's ``version`` vector row does not show the word (an ``EXISTS`` per probe)."""
        rows = ProductEmbedding.objects.filter(product=OuterRef("pk"), model_version=version)
        q = Q()
        for probe in self.probes.values():
            q &= Q(search_vector=says(probe.opposite)) | Q(Exists(rows.filter(~Q(self._shows(probe)))))
        return q


def probes_warm(version: ModelVersion) -> dict[str, float]:
    """Fit and cache the probes of the words the catalog's own "-less" words negate (``sleeves`` for
    ``sleeveless``), so that no shopper's first negated query after an activation waits for a fit.

    Returns:
        ``{word: balanced accuracy}`` of the usable probes.
    """
    usable = {}
    for stem in sorted(filter(None, map(less_stem, vocabulary_build().words))):
        probe = probe_for(version, stem, less_word(stem))
        if probe is not None:
            usable[stem] = probe.accuracy
    return usable


def query_probes(negated: Iterable[str], version: ModelVersion | None) -> Probes | None:
    """The usable probes of the negated one-word phrases (``sleeves``, against ``sleeveless``) for
    ``version``; None without a model or without any usable probe."""
    if version is None:
        return None
    found = {}
    for words in negated:
        probe = probe_for(version, words, less_word(words)) if " " not in words else None
        if probe is not None:
            found[words] = probe
    return Probes(found) if found else None


__all__ = [
    "Probe",
    "Probes",
    "less_word",
    "probe_build",
    "probe_fit",
    "probe_for",
    "probes_warm",
    "query_probes",
    "says",
]
