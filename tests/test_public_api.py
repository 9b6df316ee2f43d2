"""The curated public API: every advertised name resolves, and the docstring's example runs."""

import lpu_jax


def test_every_public_name_resolves():
    for name in lpu_jax.__all__:
        assert getattr(lpu_jax, name) is not None


def test_the_documented_example_runs():
    model = lpu_jax.load_model()
    engine = lpu_jax.Engine(model, layout=lpu_jax.Layout(tp=3, pp=2),
                            precision="truepoint-int8")
    question = "What is the capital of France?"
    ids = model.tokenizer.apply_chat_template([{"role": "user", "content": question}])
    assert "Paris" in model.tokenizer.decode(engine.generate(ids, 12).tokens)
