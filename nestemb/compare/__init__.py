"""Representation comparison: linear CKA (biased and debiased), mutual k-NN alignment with a
permutation null, orthogonal Procrustes distance and Convergent-Learning neuron matching, each
on raw rows or per prefix view of a nesting (:func:`compare_prefixes`)."""

from nestemb.compare.knn import MutualKnnTest, mutual_knn, mutual_knn_test
from nestemb.compare.measures import NeuronMatching, cka, neuron_matching, procrustes_distance
from nestemb.compare.prefixes import (
    MEASURES,
    PrefixComparison,
    compare_per_prefix,
    compare_prefixes,
)

__all__ = [
    "MEASURES",
    "MutualKnnTest",
    "NeuronMatching",
    "PrefixComparison",
    "cka",
    "compare_per_prefix",
    "compare_prefixes",
    "mutual_knn",
    "mutual_knn_test",
    "neuron_matching",
    "procrustes_distance",
]
