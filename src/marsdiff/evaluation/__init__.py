"""Evaluation of generated crater images against the held-out reference split.

Does RL make the model cover the real variety of craters better than turning up the sampling
noise, without losing realism? This package answers with numbers, intervals and pictures, on
feature matrices (float64) of generated images and of the held-out / train reference splits.

Modules, one concept each:

=================  ========================================================================================
``settings``       :class:`EvaluationSettings` (every number an evaluation depends on, from the schema-filled section)
``reference``      :class:`ReferenceSet`: held-out and train features and categories
``distances``      exact Euclidean distances and k-NN radii (scikit-learn NearestNeighbors)
``bootstrap``      counts-based percentile bootstrap, paired across models
``metric``         :class:`Metric` (a statistic of counts) and its estimate with interval
``fidelity``       Fréchet distance, KID, MMD^2 (+ split-half baseline)
``manifold``       precision, recall (k = 3), density, coverage (k = 5)
``diversity``      Vendi score, near-duplicate pairs
``categories``     category classifier, KL of category histograms, per-category coverage
``modes``          k-means mode coverage
``memorisation``   distance to the nearest train crop vs the held-out crops' own
``evaluate``       :func:`evaluate_models` / :func:`evaluate_feature_set`, real-vs-real baselines
``results``        :class:`Evaluation` tables, written to / read from CSV
``endpoints``      the workflow's verdict: each policy vs the frozen knob and the base on declared
                   endpoints (paired bootstrap p-values, Holm), comparisons.csv
``report``         number formatting and the metric x model table of summary.md
``plots``          t-SNE, reward curves, category coverage, sample grids, novel/redundant images, intervals
=================  ========================================================================================

Typical use in the ``evaluate`` stage::

    reference = ReferenceSet.from_files(manifest_csv, reference_features_npy, settings.category_columns)
    evaluation = evaluate_models({"base eta=1": x_base, "exp_mmd": x_tuned}, reference, settings)
    evaluation.write("results/eval")          # metrics.csv, bootstrap.csv, ...

The verdict (each policy against the base and the frozen knob on declared endpoints) is
:func:`marsdiff.evaluation.endpoints.comparison_table`.
"""

from marsdiff.lazy import lazy_exports

#: Each public name and the submodule that defines it, imported on first access (PEP 562).
#: Importing any ``marsdiff.evaluation.*`` module runs this file first: eager imports here would
#: make the light stages (pixel_statistics, report_summary) pay for scikit-learn and scipy,
#: which only the metrics use (docs/performance.md).
_EXPORTS = {
    "REAL_MODEL": "evaluate",
    "REAL_MODELS": "evaluate",
    "SPLIT_HALF_MODEL": "evaluate",
    "evaluate_feature_set": "evaluate",
    "evaluate_models": "evaluate",
    "ReferenceSet": "reference",
    "Evaluation": "results",
    "EvaluationSettings": "settings",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
