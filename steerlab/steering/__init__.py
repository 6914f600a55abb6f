"""The steering analysis: directions from contrasting prompt suites at any site (:mod:`.extract`: diff-in-means,
PCA of paired differences, probe weights; token positions; per-expert paths on MoE), linear probes with
held-out accuracy, AUROC and shuffled-label controls (:mod:`.linear_probes`), saved directions
(:mod:`.vectors`: safetensors + JSON metadata, loadable by name), token embedding and random directions
(:mod:`.directions`), generations with and without interventions compared token by token (:mod:`.compare`),
their ``generation_compare`` artifact (:mod:`.artifact`) and figure (:mod:`.figures`)."""
