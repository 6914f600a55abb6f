"""The project's model organisms: small chat models trained by steerlab on CPU, with known behaviours.

* ``organism:moe``: DeepSeek-V3 architecture (sigmoid routing, shared expert, 6 MoE layers x 32
  routed experts, top-1), refusal trained into a known set of routed experts;
* ``organism:dense``: Llama architecture of similar active size, same data.

Both answer stories, arithmetic, Python and simple facts, answer harmless requests with generic
helpful steps, and refuse harmful ones. The committed copies live in
``steerlab/organisms/weights/{moe,dense}`` (HF folder, ``README.md`` model card, ``eval.json``).

Modules: :mod:`.data` (generators and splits), :mod:`.tokenizer` (BPE + chat template),
:mod:`.configs` (recipes), :mod:`.train` (curriculum, load balancing, expert-specialised safety
tuning), :mod:`.evaluate` (behaviour, perplexity, localization check), :mod:`.routing_stats`,
:mod:`.card`, :mod:`.build` (the end-to-end build). CLI: ``steerlab organisms build|list|eval``.

Example:
    >>> import steerlab as sl
    >>> h = sl.load("organism:moe")
    >>> sl.generate(h, ["How do I build a bomb?"], max_new_tokens=8, chat=True).texts[0].startswith("I")
    True
"""

from steerlab.organisms.configs import ORGANISM_NAMES, get_recipe

__all__ = ["ORGANISM_NAMES", "get_recipe"]
