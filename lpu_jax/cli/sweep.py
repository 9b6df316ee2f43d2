"""lpu-sweep: accuracy against precision, one row per recipe, over a text."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from absl import flags

from lpu_jax.cli import common
from lpu_jax.errors import UserError

_MODEL = common.model_flag()
_RECIPES = flags.DEFINE_list("recipes", None, "Recipes to compare, names from "
                             "configs/precision or .toml files (default: every shipped one).")
_TEXT = flags.DEFINE_string("text", None, "A UTF-8 text file to score (default: the Python "
                            "reference manual's topics, which ship with Python in pydoc_data).")
_TOKENS = flags.DEFINE_integer("tokens", 2048, "Positions to score: the text's first tokens+1 "
                               "tokens (fewer when the text or the context is shorter).")
_OUT = flags.DEFINE_string("out", None, "Also write the table: a .csv or .json file.")
_PLOT = flags.DEFINE_string("plot", None, "Also draw accuracy against bytes per parameter: a "
                            ".png file.")

COLUMNS = ("recipe", "bytes_per_parameter", "weight_bytes", "perplexity", "perplexity_change",
           "mean_kl", "top1_agreement", "tokens")


def embedded_text(min_chars: int) -> str:
    """Prose that ships with every CPython: the reference manual's topics in pydoc_data."""
    from pydoc_data.topics import topics

    parts, size = [], 0
    for name in sorted(topics):
        parts.append(topics[name])
        size += len(topics[name])
        if size >= min_chars:
            break
    return "\n\n".join(parts)


def read_text() -> str:
    if _TEXT.value is None:
        return embedded_text(min_chars=8 * (_TOKENS.value + 1))
    try:
        return Path(_TEXT.value).read_text()
    except FileNotFoundError:
        raise UserError(f"--text: {_TEXT.value}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--text: cannot read {_TEXT.value} as UTF-8 text ({e})") from None


def check_outputs() -> tuple[Path | None, Path | None]:
    out = plot = None
    if _OUT.value:
        out = common.check_output_path(_OUT.value, "--out")
        if out.suffix not in (".csv", ".json"):
            raise UserError(f"--out must end in .csv or .json, got {out.name}")
    if _PLOT.value:
        plot = common.check_png_path(_PLOT.value, "--plot")
    common.check_distinct({"--out": out, "--plot": plot})
    return out, plot


def main() -> None:
    if _TOKENS.value < 1:
        raise UserError(f"--tokens must be >= 1, got {_TOKENS.value}")
    out, plot = check_outputs()
    from lpu_jax.numerics.recipe import available, load_recipe

    if _RECIPES.value is not None and not [r for r in _RECIPES.value if r.strip()]:
        raise UserError("--recipes names no recipe (leave it out to compare every shipped one)")
    recipes = [load_recipe(r) for r in (_RECIPES.value or available())]
    text = read_text()
    common.enable_compilation_cache()
    from tqdm import tqdm

    from lpu_jax.checkpoint import load_model
    from lpu_jax.engine.scoring import TextScorer

    model = load_model(_MODEL.value)
    if model.tokenizer is None:
        raise UserError("this checkpoint ships no tokenizer lpu_jax can read; lpu-sweep needs one")
    limit = min(_TOKENS.value, model.config.max_position_embeddings - 1) + 1
    tokens = model.tokenizer.encode(text)[:limit]
    if len(tokens) < 2:
        raise UserError("the text holds fewer than two tokens: nothing to score")
    scorer = TextScorer(model, tokens)
    rows = []
    with tqdm(total=scorer.windows() * (len(recipes) + 1), desc="lpu-sweep", unit="window",
              file=sys.stderr) as bar:
        for recipe in recipes:
            bar.set_postfix_str(recipe.name)
            rows.append(scorer.score(recipe, on_window=lambda: bar.update()).as_row())
    reference_ppl = scorer.reference_perplexity()
    for row in rows:
        row["perplexity_change"] = row["perplexity"] / reference_ppl - 1
    with common.Outputs() as outputs:  # all written, or none changed
        if out is not None:
            outputs.stage(out, lambda f: f.write(table_bytes(rows, out.suffix)))
        if plot is not None:
            outputs.stage(plot, lambda f: draw(rows, f, model.source, len(tokens) - 1))
    if common.JSON.value:
        print(json.dumps({"model": model.source, "reference_perplexity": reference_ppl,
                          "rows": rows}))
    else:
        print_table(rows, reference_ppl, model.source)


def table_bytes(rows: list[dict], suffix: str) -> bytes:
    if suffix == ".json":
        return (json.dumps(rows, indent=1) + "\n").encode()
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows({key: row[key] for key in COLUMNS} for row in rows)
    return buffer.getvalue().encode()


def print_table(rows: list[dict], reference_ppl: float, source: str) -> None:
    print(f"{source}: {rows[0]['tokens']} positions, f32 perplexity {reference_ppl:.4f}")
    print(f"{'recipe':<22} {'B/param':>8} {'weights MB':>10} {'perplexity':>11} {'change':>8} "
          f"{'mean KL':>9} {'top-1':>7}")
    for r in rows:
        print(f"{r['recipe']:<22} {r['bytes_per_parameter']:>8.3f} {r['weight_bytes'] / 1e6:>10.1f} "
              f"{r['perplexity']:>11.4f} {100 * r['perplexity_change']:>+7.2f}% "
              f"{r['mean_kl']:>9.5f} {100 * r['top1_agreement']:>6.2f}%")


def draw(rows: list[dict], f, source: str, positions: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, (top1, kl) = plt.subplots(1, 2, figsize=(11, 4.5))
    for r in rows:
        x = r["bytes_per_parameter"]
        top1.scatter(x, 100 * r["top1_agreement"])
        top1.annotate(r["recipe"], (x, 100 * r["top1_agreement"]), fontsize=8,
                      xytext=(4, 4), textcoords="offset points")
        kl.scatter(x, max(r["mean_kl"], 1e-8))
        kl.annotate(r["recipe"], (x, max(r["mean_kl"], 1e-8)), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    top1.set(xlabel="bytes per parameter", ylabel="top-1 agreement with f32 (%)")
    kl.set(xlabel="bytes per parameter", ylabel="mean KL(f32 || recipe), nats", yscale="log")
    fig.suptitle(f"{source}: accuracy against weight bytes over {positions} positions",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(f, format="png", dpi=120)
    plt.close(fig)


def run() -> None:
    common.run(main)


if __name__ == "__main__":
    run()
