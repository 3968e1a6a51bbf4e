"""The smoke profile shrunk for unit tests, shared by the test files that train.

``TINY``: 2 languages, a 1-layer model, 12 SFT and 16 preference steps; a test changes what it needs
with ``{**TINY, ...}``. tests/test_short_run_numbers.py's committed log-probs were made with it.
"""

TINY = dict(
    languages=["en", "ru"],
    testbed_train=160,
    testbed_eval=48,
    max_length=48,
    batch_size=8,
    sft_steps=12,
    max_steps=16,
    tiny_hidden_size=32,
    tiny_layers=1,
    tiny_vocab_size=320,
    eval_batch_size=48,
    log_every=4,
    progress="lines",
    sft_cache=False,
)
