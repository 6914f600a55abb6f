"""The steering analysis: directions in the residual basis (:mod:`.directions`), generations with and
without interventions compared token by token (:mod:`.compare`), their ``generation_compare`` artifact
(:mod:`.artifact`) and figure (:mod:`.figures`). Steering vectors and linear probes join here."""
